//! Key checks (DESIGN.md section 4): missing and late invalidations, stale
//! fills and fills after a delete, for one cache key. Pure: records and the
//! watermark in, verdicts out.
//!
//! Verdicts wait for the watermark, so they do not depend on how the CDC and
//! cache inputs interleave:
//! - a change is judged once the watermark passes its deadline (`t +
//!   deadline`): covered in time, or `missing_invalidation`; a missed change
//!   then waits up to `late_window` for its first covering invalidation, and
//!   reports it as `late_invalidation` once the watermark passes it;
//! - a fill is judged once the watermark passes its time, against `L`, the
//!   latest create, update or delete of the key committed more than `skew`
//!   before it.
//!
//! A key also keeps its invalidations and judged fills of the last
//! `history_ms` of its own activity, so that a change arriving after them
//! (replayed from the dead-letter queue once its table is mapped) is judged
//! as it would have been live: covered by the invalidations already seen, and
//! the fills after it judged again, reporting what their verdict gained.

use smol_str::SmolStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::events::{Violation, ViolationKind};
use crate::mapping::Change;
use crate::model::{Millis, Name, Op, Provenance, SeenIds, Version, first_sighting, push_bounded};

/// Ids of changes and fills remembered per key to recognise redeliveries.
pub const SEEN_IDS: usize = 32;

/// The knobs of the key checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRules {
    pub skew_ms: i64,
    pub late_window_ms: i64,
    /// Bounds the changes, retained invalidations and judged fills per key.
    pub max_changes: usize,
    /// Event time, back from the key's latest record, for which its
    /// invalidations and judged fills are kept for late changes.
    pub history_ms: i64,
}

impl KeyRules {
    /// Invalidations (of a key or a glob) stamped before this are forgotten,
    /// at watermark `wm` with `latest` the latest event time they run back
    /// from: none of them covers a change that can still arrive in time
    /// (their time is before `wm - skew`), nor a late one within the
    /// history (before `latest - history_ms`, or at it).
    pub fn forget_before(&self, wm: Millis, latest: Millis) -> Millis {
        wm.saturating_sub(self.skew_ms)
            .min(latest.saturating_sub(self.history_ms).saturating_add(1))
    }
}

/// Where a change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Waiting for its deadline.
    Pending,
    /// Reported missing; waiting for a late invalidation.
    Missed,
    /// Nothing more to report; kept as history for fills.
    Decided,
}

/// The earliest invalidation that covers a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cover {
    pub ts: Millis,
    pub service: Option<Name>,
    pub evidence: Provenance,
}

/// A change as the key remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    pub id: u64,
    pub entity: u64,
    pub table: Name,
    pub pk: SmolStr,
    pub op: Op,
    pub version: Option<Version>,
    pub ts: Millis,
    pub deadline_ms: i64,
    pub status: Status,
    pub cover: Option<Cover>,
    pub evidence: Provenance,
    /// The change's transaction (inline up to 23 bytes, else shared with
    /// every change of it).
    pub tx: Option<SmolStr>,
}

impl KeyChange {
    fn due(&self) -> Millis {
        self.ts.saturating_add(self.deadline_ms)
    }

    /// The end of the late window of a missed change.
    fn window_end(&self, rules: &KeyRules) -> Millis {
        self.due().saturating_add(rules.late_window_ms)
    }

    /// The cover that can still resolve a missed change: one within its late
    /// window. (An invalidation beyond it must not count, whether or not it
    /// happened to be read before the window closed.)
    fn late_cover(&self, rules: &KeyRules) -> Option<&Cover> {
        self.cover
            .as_ref()
            .filter(|c| c.ts <= self.window_end(rules))
    }

    /// Ordering by commit time; version and id break ties deterministically.
    fn order(&self) -> (Millis, Option<Version>, u64) {
        (self.ts, self.version, self.id)
    }
}

/// An invalidation of the key (or of a glob matching it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    pub ts: Millis,
    pub version: Option<u64>,
    pub service: Option<Name>,
    pub evidence: Provenance,
}

impl Invalidation {
    /// DESIGN.md section 4: I covers C = (K, V, t) when I.ts >= t - skew and,
    /// where both carry a version, I.version >= V.
    pub fn covers(&self, c: &KeyChange, skew_ms: i64) -> bool {
        self.ts >= c.ts.saturating_sub(skew_ms)
            && match (self.version, c.version) {
                (Some(iv), Some(cv)) => cv.covered_by(iv),
                _ => true,
            }
    }
}

/// A fill of the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    pub id: u64,
    pub ts: Millis,
    pub version: Option<u64>,
    pub service: Option<Name>,
    pub evidence: Provenance,
    /// The violation already reported for it, if any: judged again after a
    /// late change, a fill reports only a verdict it did not report before.
    pub reported: Option<ViolationKind>,
}

/// Of a change invalidated in time: when it was due, the service whose
/// invalidation covered it, and its transaction.
pub type InTimeDue = (Millis, Option<Name>, Option<SmolStr>);

/// What advancing the watermark over a key decided.
#[derive(Debug, Default)]
pub struct Decisions {
    pub violations: Vec<Violation>,
    /// Changes invalidated within their deadline: table and lag (ms).
    pub in_time: Vec<(Name, i64)>,
    /// For each change of `in_time`, in the same order: when it was due,
    /// the service whose invalidation covered it, and its transaction.
    pub in_time_due: Vec<InTimeDue>,
    /// Missed changes whose late window ended without an invalidation.
    pub expired: u64,
    /// Undecided changes forgotten because the key exceeded its limit.
    pub evicted: u64,
}

/// A key's changes: most keys hold one at a time, kept inline in the key's
/// record (no allocation of its own, nothing to read elsewhere).
pub type Changes = SmallVec<[KeyChange; 1]>;

/// A key's retained invalidations: most keys hold one, kept inline.
pub type Invalidations = SmallVec<[Invalidation; 1]>;

/// A list of a key's fills.
pub type Fills = SmallVec<[Fill; 0]>;

/// A key's fills: those waiting for the watermark, and the judged fills of
/// its history. Most keys have none, so both lists are held behind one
/// pointer, allocated only while the key has a fill: 8 bytes in every
/// key's record instead of 48. Stored as the two lists one after the other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFills(Option<Box<FillLists>>);

/// The two lists of [`KeyFills`], at least one of them not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FillLists {
    /// Fills waiting for the watermark.
    pub waiting: Fills,
    /// Judged fills of the history, oldest first, judged again when a
    /// change committed before them arrives late.
    pub judged: Fills,
}

impl FillLists {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.judged.is_empty()
    }
}

impl KeyFills {
    /// Holds both lists, or nothing if both are empty.
    fn of(lists: FillLists) -> Self {
        KeyFills((!lists.is_empty()).then(|| Box::new(lists)))
    }

    /// The lists, if the key has a fill.
    pub fn lists(&self) -> Option<&FillLists> {
        self.0.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Fills waiting for the watermark.
    pub fn waiting(&self) -> &[Fill] {
        self.lists().map_or(&[], |l| &l.waiting)
    }

    /// Judged fills of the history, oldest first.
    pub fn judged(&self) -> &[Fill] {
        self.lists().map_or(&[], |l| &l.judged)
    }

    /// Every fill, waiting then judged, to change in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Fill> {
        self.0
            .iter_mut()
            .flat_map(|l| l.waiting.iter_mut().chain(l.judged.iter_mut()))
    }

    /// The waiting and the judged fills.
    pub fn into_vecs(self) -> (Vec<Fill>, Vec<Fill>) {
        self.0.map_or_else(Default::default, |l| {
            (l.waiting.into_vec(), l.judged.into_vec())
        })
    }
}

impl Serialize for KeyFills {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(self.waiting())?;
        t.serialize_element(self.judged())?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for KeyFills {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (waiting, judged) = <(Fills, Fills)>::deserialize(d)?;
        Ok(KeyFills::of(FillLists { waiting, judged }))
    }
}

/// Everything vigil remembers of one cache key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Sorted by [`KeyChange::order`].
    pub changes: Changes,
    /// Recent invalidations, kept for changes that arrive after them.
    pub invalidations: Invalidations,
    /// Fills waiting for the watermark, and judged fills of the history.
    pub fills: KeyFills,
    /// Recent change and fill ids, oldest first.
    pub seen: SeenIds,
    /// Latest event time seen at this key (drives retention).
    pub touched: Millis,
}

impl KeyState {
    fn touch(&mut self, ts: Millis) {
        self.touched = self.touched.max(ts);
    }

    /// A create, update or delete of a row cached under this key.
    /// `wildcards` are the retained glob invalidations matching the key.
    /// Returns false for a redelivery, which changes nothing.
    pub fn on_change<'a>(
        &mut self,
        change: &Change,
        wildcards: impl Iterator<Item = &'a Invalidation>,
        rules: &KeyRules,
    ) -> bool {
        debug_assert!(change.op.obliges_invalidation());
        if !first_sighting(&mut self.seen, change.id, SEEN_IDS) {
            return false;
        }
        self.touch(change.commit_ts_ms);
        let mut entry = KeyChange {
            id: change.id,
            entity: change.entity,
            table: change.table.clone(),
            pk: change.pk.clone(),
            op: change.op,
            version: change.version,
            ts: change.commit_ts_ms,
            deadline_ms: change.rules.deadline_ms,
            status: Status::Pending,
            cover: None,
            evidence: change.provenance.clone(),
            tx: change.tx_id.clone(),
        };
        for inv in &self.invalidations {
            offer_cover(&mut entry, inv, rules.skew_ms);
        }
        for inv in wildcards {
            // As if the glob had reached the key after the change: the
            // key's latest event time does not depend on the order.
            self.touch(inv.ts);
            offer_cover(&mut entry, inv, rules.skew_ms);
        }
        let at = self.changes.partition_point(|c| c.order() < entry.order());
        self.changes.insert(at, entry);
        if let Some(lists) = self.fills.0.as_deref_mut() {
            let FillLists { waiting, judged } = lists;
            waiting.extend(judged.drain_filter(|f| f.ts > change.commit_ts_ms));
        }
        true
    }

    /// An invalidation of this key. `retain` keeps it for changes that
    /// arrive later (glob invalidations are retained by the caller instead).
    pub fn on_invalidation(&mut self, inv: &Invalidation, retain: bool, rules: &KeyRules) {
        self.touch(inv.ts);
        for c in &mut self.changes {
            if c.status != Status::Decided {
                offer_cover(c, inv, rules.skew_ms);
            }
        }
        if retain {
            push_bounded(&mut self.invalidations, inv.clone(), rules.max_changes);
        }
    }

    /// A fill of this key. Returns false for a redelivery.
    pub fn on_fill(&mut self, fill: Fill) -> bool {
        if !first_sighting(&mut self.seen, fill.id, SEEN_IDS) {
            return false;
        }
        self.touch(fill.ts);
        self.fills.0.get_or_insert_default().waiting.push(fill);
        true
    }

    /// Decides everything the watermark `wm` has made final, forgets what no
    /// later record can need, and returns when the key next needs the
    /// watermark (its next due time), if ever.
    pub fn advance(
        &mut self,
        key: &str,
        wm: Millis,
        rules: &KeyRules,
        out: &mut Decisions,
    ) -> Option<Millis> {
        for c in &mut self.changes {
            decide_change(c, key, wm, rules, out);
        }
        let history = self.history_start(rules);
        if let Some(mut lists) = self.fills.0.take() {
            // The fills the watermark has reached, in the order they came.
            let mut i = 0;
            while i < lists.waiting.len() {
                if lists.waiting[i].ts > wm {
                    i += 1;
                    continue;
                }
                let mut fill = lists.waiting.remove(i);
                if let Some(v) = self.judge_fill(&fill, key, rules)
                    && fill.reported != Some(v.kind)
                {
                    fill.reported = Some(v.kind);
                    out.violations.push(v);
                }
                if fill.ts > history {
                    push_bounded(&mut lists.judged, fill, rules.max_changes);
                }
            }
            if lists.waiting.is_empty() {
                // Most keys see a fill or two: their room is not kept.
                lists.waiting = Fills::new();
            }
            lists.judged.retain(|f| f.ts > history);
            // The allocation is kept while a list holds a fill.
            self.fills = KeyFills((!lists.is_empty()).then_some(lists));
        }
        let cutoff = rules.forget_before(wm, self.touched);
        self.invalidations.retain(|i| i.ts >= cutoff);
        self.forget_history(wm.saturating_sub(rules.skew_ms), rules.max_changes, out);
        self.next_due(rules)
    }

    /// Records stamped at or before this are beyond the key's history.
    fn history_start(&self, rules: &KeyRules) -> Millis {
        self.touched.saturating_sub(rules.history_ms)
    }

    /// Whether a change of the key is not decided yet.
    pub fn has_undecided(&self) -> bool {
        self.changes.iter().any(|c| c.status != Status::Decided)
    }

    /// Whether a change waiting for its deadline has no invalidation that
    /// covers it by then (yet): unless one comes, it is reported missing
    /// when the watermark passes its deadline.
    pub fn uncovered_by_deadline(&self) -> bool {
        self.changes.iter().any(|c| {
            c.status == Status::Pending && c.cover.as_ref().is_none_or(|cover| cover.ts > c.due())
        })
    }

    /// Whether a change within its deadline waits for an invalidation to
    /// cover it (which then usually comes soon).
    pub fn awaits_cover(&self) -> bool {
        self.changes
            .iter()
            .any(|c| c.status == Status::Pending && c.cover.is_none())
    }

    /// Whether the key holds nothing worth keeping.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.invalidations.is_empty() && self.fills.is_empty()
    }

    /// The next time the watermark must reach for something to happen here.
    pub fn next_due(&self, rules: &KeyRules) -> Option<Millis> {
        let changes = self.changes.iter().filter_map(|c| match c.status {
            Status::Pending => Some(c.due()),
            Status::Missed => Some(
                c.late_cover(rules)
                    .map_or(c.window_end(rules), |cover| cover.ts),
            ),
            Status::Decided => None,
        });
        let fills = self.fills.waiting().iter().map(|f| f.ts);
        let history = self.history_start(rules);
        let expiries = self
            .invalidations
            .iter()
            .filter(|i| i.ts <= history)
            .map(|i| i.ts.saturating_add(rules.skew_ms).saturating_add(1));
        changes.chain(fills).chain(expiries).min()
    }

    /// L: the latest create, update or delete committed before `before`.
    fn latest_before(&self, before: Millis) -> Option<&KeyChange> {
        let end = self.changes.partition_point(|c| c.ts < before);
        self.changes[..end].last()
    }

    fn judge_fill(&self, fill: &Fill, key: &str, rules: &KeyRules) -> Option<Violation> {
        let latest = self.latest_before(fill.ts.saturating_sub(rules.skew_ms))?;
        let kind = match latest.op {
            Op::Create | Op::Update => match (fill.version, latest.version) {
                (Some(vf), Some(vl)) if vf < vl.major => ViolationKind::StaleFill,
                _ => return None,
            },
            Op::Delete => {
                let recreated = self.changes.iter().any(|c| {
                    c.entity == latest.entity
                        && matches!(c.op, Op::Create | Op::Update)
                        && c.ts > latest.ts
                        && c.ts <= fill.ts
                });
                if recreated {
                    return None;
                }
                ViolationKind::FillAfterDelete
            }
            Op::Read | Op::Truncate => return None,
        };
        Some(Violation {
            op: Some(latest.op),
            version: fill.version.map(Version::scalar),
            latest_version: latest.version,
            change_ts_ms: Some(latest.ts),
            cache_ts_ms: Some(fill.ts),
            source_service: fill.service.clone(),
            evidence: vec![fill.evidence.clone(), latest.evidence.clone()],
            ..Violation::new(
                kind,
                Some(Arc::from(key)),
                fill.id,
                latest.table.clone(),
                latest.pk.clone(),
                fill.ts,
            )
        })
    }

    /// Keeps what later records may need: undecided changes, every change at
    /// or after `horizon` (the fills still to come look back from there), and
    /// the latest change before it (their `L`); then enforces the limit.
    fn forget_history(&mut self, horizon: Millis, max_changes: usize, out: &mut Decisions) {
        let before = self.changes.partition_point(|c| c.ts < horizon);
        if before > 1 {
            let mut index = 0;
            self.changes.retain(|c| {
                let keep = index + 1 >= before || c.status != Status::Decided;
                index += 1;
                keep
            });
        }
        while self.changes.len() > max_changes {
            let victim = self
                .changes
                .iter()
                .position(|c| c.status == Status::Decided)
                .unwrap_or_else(|| {
                    out.evicted += 1;
                    0
                });
            self.changes.remove(victim);
        }
    }
}

/// Records `inv` as the change's cover if it covers it and is earlier than
/// the cover known so far.
fn offer_cover(c: &mut KeyChange, inv: &Invalidation, skew_ms: i64) {
    if inv.covers(c, skew_ms) && c.cover.as_ref().is_none_or(|cover| inv.ts < cover.ts) {
        c.cover = Some(Cover {
            ts: inv.ts,
            service: inv.service.clone(),
            evidence: inv.evidence.clone(),
        });
    }
}

fn decide_change(c: &mut KeyChange, key: &str, wm: Millis, rules: &KeyRules, out: &mut Decisions) {
    if c.status == Status::Pending && c.due() <= wm {
        match &c.cover {
            Some(cover) if cover.ts <= c.due() => {
                c.status = Status::Decided;
                out.in_time
                    .push((c.table.clone(), (cover.ts - c.ts).max(0)));
                out.in_time_due
                    .push((c.due(), cover.service.clone(), c.tx.clone()));
            }
            _ => {
                c.status = Status::Missed;
                out.violations.push(change_violation(
                    c,
                    key,
                    ViolationKind::MissingInvalidation,
                    c.due(),
                ));
            }
        }
    }
    if c.status == Status::Missed {
        match c.late_cover(rules) {
            Some(cover) if cover.ts <= wm => {
                let mut v = change_violation(c, key, ViolationKind::LateInvalidation, cover.ts);
                v.lag_ms = Some(cover.ts - c.ts);
                v.cache_ts_ms = Some(cover.ts);
                v.source_service = cover.service.clone();
                v.evidence.push(cover.evidence.clone());
                out.violations.push(v);
                c.status = Status::Decided;
            }
            None if c.window_end(rules) <= wm => {
                out.expired += 1;
                c.status = Status::Decided;
            }
            _ => {}
        }
    }
}

fn change_violation(c: &KeyChange, key: &str, kind: ViolationKind, time_ms: Millis) -> Violation {
    Violation {
        op: Some(c.op),
        version: c.version,
        change_ts_ms: Some(c.ts),
        deadline_ms: Some(c.deadline_ms),
        transaction_id: c.tx.clone(),
        evidence: vec![c.evidence.clone()],
        ..Violation::new(
            kind,
            Some(Arc::from(key)),
            c.id,
            c.table.clone(),
            c.pk.clone(),
            time_ms,
        )
    }
}

/// A glob invalidation kept for the changes that arrive after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedGlob {
    pub pattern: Arc<str>,
    pub inv: Invalidation,
    /// The input partition number it came from.
    pub scope: i32,
}

/// Retained glob invalidations, indexed by the literal text before their
/// first `*`: a key only needs the globs whose prefix it starts with, found
/// by one lookup per distinct prefix length (usually one or two) instead of
/// a match against every glob.
#[derive(Debug, Default)]
pub struct Wildcards {
    by_prefix: std::collections::HashMap<Box<str>, Vec<RetainedGlob>, foldhash::fast::RandomState>,
    /// Prefix lengths in use, with how many globs have each.
    lengths: std::collections::BTreeMap<usize, usize>,
    /// The time of the oldest glob, if any.
    oldest: Option<Millis>,
    /// Bytes of the patterns' and prefixes' text.
    text_bytes: usize,
}

impl Wildcards {
    pub fn insert(&mut self, glob: RetainedGlob) {
        self.oldest = Some(self.oldest.map_or(glob.inv.ts, |o| o.min(glob.inv.ts)));
        let prefix = glob_prefix(&glob.pattern);
        *self.lengths.entry(prefix.len()).or_default() += 1;
        self.text_bytes += glob.pattern.len();
        // Most prefixes have one glob (one an entity: `t1:42:*`): room for
        // one, not the four a first push makes.
        self.by_prefix
            .entry(Box::from(prefix))
            .or_insert_with(|| {
                self.text_bytes += prefix.len();
                Vec::with_capacity(1)
            })
            .push(glob);
    }

    /// How many globs are retained.
    pub fn len(&self) -> usize {
        self.lengths.values().sum()
    }

    /// Whether no glob is retained.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// How many distinct prefixes the globs have.
    pub fn prefixes(&self) -> usize {
        self.by_prefix.len()
    }

    /// Bytes of the text of the globs' patterns and of their prefixes.
    pub fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// The retained invalidations whose glob matches `key`.
    pub fn matching<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Invalidation> + 'a {
        self.lengths
            .keys()
            .filter_map(move |&len| key.get(..len).and_then(|p| self.by_prefix.get(p)))
            .flatten()
            .filter(move |g| glob_matches(&g.pattern, key))
            .map(|g| &g.inv)
    }

    /// Removes and returns the globs `drop` selects.
    pub fn remove(&mut self, drop: impl Fn(&RetainedGlob) -> bool) -> Vec<RetainedGlob> {
        let mut removed = Vec::new();
        let mut oldest = None;
        let (lengths, text_bytes) = (&mut self.lengths, &mut self.text_bytes);
        self.by_prefix.retain(|prefix, globs| {
            let before = removed.len();
            removed.extend(globs.extract_if(.., |g| drop(g)));
            oldest = globs.iter().map(|g| g.inv.ts).chain(oldest).min();
            if let Some(n) = lengths.get_mut(&prefix.len()) {
                *n -= removed.len() - before;
            }
            *text_bytes -= removed[before..]
                .iter()
                .map(|g| g.pattern.len())
                .sum::<usize>();
            if globs.is_empty() {
                *text_bytes -= prefix.len();
            }
            !globs.is_empty()
        });
        lengths.retain(|_, n| *n > 0);
        self.oldest = oldest;
        removed
    }

    /// Forgets the globs stamped before `cutoff` (see
    /// [`KeyRules::forget_before`]) and returns them. A pass over every glob is made only once
    /// the oldest is `slack` older than the cutoff, so its cost is shared by
    /// the globs of `slack` of event time; until then the few expired globs
    /// are kept, which no verdict within the history can tell.
    pub fn prune(&mut self, cutoff: Millis, slack: i64) -> Vec<RetainedGlob> {
        if self
            .oldest
            .is_none_or(|o| o >= cutoff.saturating_sub(slack))
        {
            return Vec::new();
        }
        self.remove(|g| g.inv.ts < cutoff)
    }
}

/// Whether a cache key matches a glob where `*` stands for any run of
/// characters (including none).
pub fn glob_matches(pattern: &str, key: &str) -> bool {
    let (p, k) = (pattern.as_bytes(), key.as_bytes());
    let (mut pi, mut ki) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ki < k.len() {
        if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi, ki));
            pi += 1;
        } else if pi < p.len() && p[pi] == k[ki] {
            pi += 1;
            ki += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ki = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The literal text before a glob's first `*`: every matching key starts
/// with it, so an ordered index can be scanned from there.
pub fn glob_prefix(pattern: &str) -> &str {
    pattern.split('*').next().unwrap_or_default()
}

#[cfg(test)]
mod tests;
