//! Consistency incidents: the unit an on-call engineer acts on. Per table,
//! the share of changes invalidated in time over a sliding window of event
//! time; when it falls below the SLO an incident opens, is reported again at
//! most every `update_every`, and resolves once the share has stayed at or
//! above the SLO for `hold` seconds ([`super::lifecycle`], shared with
//! storms). Pure: the key checks' verdicts and the time they are final up to
//! in, incident events out.
//!
//! A change counts in the second of its deadline, when its verdict became
//! final: in time, or `missing_invalidation`. The other verdicts of the
//! table's keys (late invalidations, stale fills, fills after a delete) are
//! counted by kind in the incident's report, not in the share. A window with
//! fewer than `min_changes` decided changes opens nothing: three changes, one
//! of them missed, are not an incident.
//!
//! A missing invalidation names no service (nobody sent it): an incident
//! names the service that invalidated the table's changes in time over the
//! window before it opened, when one service sent nearly all of them (a
//! table's owner), and lists the services it saw.
//!
//! Verdicts arrive from every worker; a second is judged once every worker
//! has decided everything due by its end, so incidents and their ids do not
//! depend on the number of workers. Memory is bounded: at most `max_tables`
//! tables followed, a bounded number of keys and services per second.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::lifecycle::{self, Cadence, Episode, Transition, merge_top};
use crate::events::{Violation, ViolationKind};
use crate::model::{Millis, Name};

/// Keys of missed changes sampled per table and second.
const KEYS_PER_SECOND: usize = 16;
/// Services followed per table and second.
const SERVICES_PER_SECOND: usize = 8;
/// Keys and services reported per incident.
const INCIDENT_TOP: usize = 10;
/// Share of a table's in-time changes one service must have invalidated to
/// be named as the incident's service.
const OWNER_SHARE: f64 = 0.9;
/// Seconds not judged yet kept at most (a stalled watermark folds newer
/// verdicts into the latest one rather than growing without bound).
const MAX_OPEN_SECONDS: usize = 120;

/// The rules of incident detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IncidentRules {
    /// The share of changes to invalidate in time (0..1).
    pub slo: f64,
    /// Seconds of the sliding window.
    pub window_s: u32,
    /// Decided changes a window needs before its share can open an incident.
    pub min_changes: u64,
    pub cadence: Cadence,
    /// Tables followed at once.
    pub max_tables: usize,
}

/// A violation as an incident names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The violation's event id (on the violations topic).
    pub id: String,
    pub kind: ViolationKind,
    pub key: Option<String>,
    pub time_ms: Millis,
}

impl Sample {
    fn of(v: &Violation) -> Self {
        Sample {
            id: v.id.clone(),
            kind: v.kind,
            key: v.key.as_deref().map(str::to_string),
            time_ms: v.time_ms,
        }
    }

    /// Ordering by time; the id breaks ties deterministically.
    fn order(&self) -> (Millis, &str) {
        (self.time_ms, &self.id)
    }
}

/// Keeps the earlier (`first`) or later sample.
fn keep(slot: &mut Option<Sample>, s: &Sample, first: bool) {
    let replace = slot
        .as_ref()
        .is_none_or(|cur| (s.order() < cur.order()) == first && s.order() != cur.order());
    if replace {
        *slot = Some(s.clone());
    }
}

/// Adds counted names to a sample of names: the `limit` names of lowest
/// hash. The sample of verdicts split in parts is the sample of the samples
/// of the parts, with the same counts, so it does not depend on how the
/// verdicts are split among workers and batches.
fn sample<N: AsRef<str> + Into<String>>(
    into: &mut Vec<(String, u64)>,
    from: impl IntoIterator<Item = (N, u64)>,
    limit: usize,
) {
    lifecycle::add_counts(into, from);
    if into.len() > limit {
        into.sort_by_cached_key(|(k, _)| (xxh3_64(k.as_bytes()), k.clone()));
        into.truncate(limit);
    }
}

/// One second of one table's verdicts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Changes invalidated in time.
    pub in_time: u64,
    /// Violations by kind (`missing_invalidation`: changes not in time).
    pub violations: BTreeMap<ViolationKind, u64>,
    /// Services whose invalidations covered changes in time (a sample, like
    /// `keys`).
    services: Vec<(String, u64)>,
    /// Keys of the missed changes: a sample, the same whatever the order the
    /// verdicts come in ([`sample`]).
    keys: Vec<(String, u64)>,
    /// The first and latest missed change.
    first: Option<Sample>,
    latest: Option<Sample>,
}

impl Second {
    fn missed(&self) -> u64 {
        self.violations
            .get(&ViolationKind::MissingInvalidation)
            .copied()
            .unwrap_or(0)
    }

    fn merge(&mut self, o: Second) {
        self.in_time += o.in_time;
        for (kind, n) in o.violations {
            *self.violations.entry(kind).or_default() += n;
        }
        sample(&mut self.services, o.services, SERVICES_PER_SECOND);
        sample(&mut self.keys, o.keys, KEYS_PER_SECOND);
        for (sample, first) in [(o.first, true), (o.latest, false)] {
            if let Some(s) = sample {
                keep(
                    if first {
                        &mut self.first
                    } else {
                        &mut self.latest
                    },
                    &s,
                    first,
                );
            }
        }
    }
}

/// Verdicts by second of event time and table: what a worker gathers over a
/// batch of work and hands over at once.
#[derive(Debug, Default)]
pub struct Tallies(BTreeMap<(i64, Name), Second>);

impl Tallies {
    fn second(&mut self, ts: Millis, table: &Name) -> &mut Second {
        self.0
            .entry((ts.div_euclid(1000), table.clone()))
            .or_default()
    }

    /// A change of `table` due at `due_ms`, covered in time by an
    /// invalidation of `service`.
    pub fn in_time(&mut self, due_ms: Millis, table: &Name, service: Option<&str>) {
        let s = self.second(due_ms, table);
        s.in_time += 1;
        if let Some(service) = service {
            sample(&mut s.services, [(service, 1)], SERVICES_PER_SECOND);
        }
    }

    /// A violation of the key checks. Missed changes (the verdicts that
    /// make incidents) are also named: their keys, the first and latest.
    pub fn violation(&mut self, v: &Violation) {
        let s = self.second(v.time_ms, &v.table);
        *s.violations.entry(v.kind).or_default() += 1;
        if v.kind != ViolationKind::MissingInvalidation {
            return;
        }
        if let Some(key) = &v.key {
            sample(&mut s.keys, [(key.as_ref(), 1)], KEYS_PER_SECOND);
        }
        let sample = Sample::of(v);
        keep(&mut s.first, &sample, true);
        keep(&mut s.latest, &sample, false);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An incident in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub start_ms: Millis,
    episode: Episode,
    /// The SLO and window it was opened under.
    pub slo: f64,
    pub window_ms: i64,
    /// The table's owner service, named when it opened.
    pub service: Option<String>,
    /// The services that invalidated the table's changes in time over the
    /// window before it opened.
    pub services: Vec<(String, u64)>,
    /// Violations by kind since the start of the window it opened in.
    pub violations: BTreeMap<ViolationKind, u64>,
    /// The first and latest missed change, and the keys with the most.
    pub first: Option<Sample>,
    pub latest: Option<Sample>,
    pub top_keys: Vec<(String, u64)>,
}

impl Incident {
    fn add(&mut self, s: &Second) {
        for (kind, n) in &s.violations {
            *self.violations.entry(*kind).or_default() += n;
        }
        merge_top(&mut self.top_keys, s.keys.iter().cloned(), INCIDENT_TOP);
        if let Some(f) = &s.first {
            keep(&mut self.first, f, true);
        }
        if let Some(l) = &s.latest {
            keep(&mut self.latest, l, false);
        }
    }
}

/// A followed table: its window and incident.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Scope {
    /// The seconds of the window with verdicts, oldest first.
    seconds: VecDeque<(i64, Second)>,
    /// Sums over `seconds`.
    in_time: u64,
    missed: u64,
    services: BTreeMap<String, u64>,
    incident: Option<Incident>,
}

impl Scope {
    fn push(&mut self, second: i64, s: Second) {
        self.in_time += s.in_time;
        self.missed += s.missed();
        for (name, n) in &s.services {
            *self.services.entry(name.clone()).or_default() += n;
        }
        self.seconds.push_back((second, s));
    }

    /// Forgets the seconds before `from`.
    fn slide(&mut self, from: i64) {
        while let Some((second, _)) = self.seconds.front()
            && *second < from
        {
            let (_, s) = self.seconds.pop_front().expect("present");
            self.in_time -= s.in_time;
            self.missed -= s.missed();
            for (name, n) in &s.services {
                if let Some(total) = self.services.get_mut(name) {
                    *total -= n;
                    if *total == 0 {
                        self.services.remove(name);
                    }
                }
            }
        }
    }

    fn decided(&self) -> u64 {
        self.in_time + self.missed
    }

    /// The share of the window's decided changes invalidated in time.
    fn ratio(&self) -> Option<f64> {
        let decided = self.decided();
        (decided > 0).then(|| self.in_time as f64 / decided as f64)
    }

    fn breached(&self, rules: &IncidentRules) -> bool {
        self.decided() >= rules.min_changes.max(1) && self.ratio().is_some_and(|r| r < rules.slo)
    }

    /// The services of the window, heaviest first, and its owner if any.
    fn owner(&self) -> (Option<String>, Vec<(String, u64)>) {
        let mut services = Vec::new();
        merge_top(
            &mut services,
            self.services.iter().map(|(k, n)| (k.clone(), *n)),
            INCIDENT_TOP,
        );
        let owner = services
            .first()
            .filter(|(_, n)| *n as f64 >= OWNER_SHARE * self.in_time as f64)
            .map(|(name, _)| name.clone());
        (owner, services)
    }

    /// The incident the window holds now.
    fn open(&self, time_ms: Millis, rules: &IncidentRules) -> Incident {
        let (service, services) = self.owner();
        let mut incident = Incident {
            start_ms: time_ms,
            episode: Episode::opened(time_ms),
            slo: rules.slo,
            window_ms: i64::from(rules.window_s.max(1)) * 1000,
            service,
            services,
            violations: BTreeMap::new(),
            first: None,
            latest: None,
            top_keys: Vec::new(),
        };
        for (_, s) in &self.seconds {
            incident.add(s);
        }
        // It began with its first missed change in the window.
        if let Some(first) = &incident.first {
            incident.start_ms = incident.start_ms.min(first.time_ms);
        }
        incident
    }
}

/// Where an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Opened,
    Updated,
    Resolved,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Opened, Phase::Updated, Phase::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Opened => "opened",
            Phase::Updated => "updated",
            Phase::Resolved => "resolved",
        }
    }
}

/// An incident event (`vigil.incident.opened|updated|resolved`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentEvent {
    pub id: String,
    pub phase: Phase,
    pub table: String,
    pub service: Option<String>,
    /// Event time of the report.
    pub time_ms: Millis,
    pub start_ms: Millis,
    pub duration_ms: i64,
    pub window_ms: i64,
    /// The window's decided changes, those invalidated in time, and their
    /// share (1 for an empty window).
    pub decided: u64,
    pub in_time: u64,
    pub ratio: f64,
    pub slo: f64,
    pub violations: BTreeMap<ViolationKind, u64>,
    pub first_violation: Option<Sample>,
    pub latest_violation: Option<Sample>,
    pub top_keys: Vec<(String, u64)>,
    pub services: Vec<(String, u64)>,
}

impl IncidentEvent {
    fn new(phase: Phase, table: &str, scope: &Scope, incident: &Incident, time_ms: Millis) -> Self {
        IncidentEvent {
            id: lifecycle::event_id(
                "incident",
                phase.as_str(),
                table,
                incident.start_ms,
                time_ms,
            ),
            phase,
            table: table.to_string(),
            service: incident.service.clone(),
            time_ms,
            start_ms: incident.start_ms,
            duration_ms: time_ms - incident.start_ms,
            window_ms: incident.window_ms,
            decided: scope.decided(),
            in_time: scope.in_time,
            ratio: scope.ratio().unwrap_or(1.0),
            slo: incident.slo,
            violations: incident.violations.clone(),
            first_violation: incident.first.clone(),
            latest_violation: incident.latest.clone(),
            top_keys: incident.top_keys.clone(),
            services: incident.services.clone(),
        }
    }
}

/// The persistent state of incident detection: the followed tables, and the
/// seconds of verdicts not judged yet (verdicts are decided once; a restart
/// does not decide them again).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IncidentState {
    /// The last second judged.
    closed: Option<i64>,
    open: BTreeMap<i64, BTreeMap<String, Second>>,
    tables: BTreeMap<String, Scope>,
    /// Verdicts of tables not followed because `max_tables` tables, each in
    /// an incident, were.
    unfollowed: u64,
}

impl IncidentState {
    /// The incidents open, by table, each as an update at the last second
    /// judged would report it.
    pub fn in_progress(&self) -> Vec<IncidentEvent> {
        let Some(closed) = self.closed else {
            return Vec::new();
        };
        self.tables
            .iter()
            .filter_map(|(table, scope)| {
                let incident = scope.incident.as_ref()?;
                Some(IncidentEvent::new(
                    Phase::Updated,
                    table,
                    scope,
                    incident,
                    (closed + 1) * 1000,
                ))
            })
            .collect()
    }

    /// The tables with an incident open.
    pub fn open_tables(&self) -> impl Iterator<Item = &str> {
        self.tables
            .iter()
            .filter(|(_, s)| s.incident.is_some())
            .map(|(t, _)| t.as_str())
    }

    /// Verdicts not followed for want of room (see `max_tables`).
    pub fn unfollowed(&self) -> u64 {
        self.unfollowed
    }

    /// The last second judged.
    pub fn judged_until(&self) -> Option<i64> {
        self.closed
    }
}

/// Incident detection: hand it verdicts, advance it to the time up to which
/// every verdict has been handed.
#[derive(Debug, Default)]
pub struct IncidentDetector {
    state: IncidentState,
}

impl IncidentDetector {
    pub fn new(state: IncidentState) -> Self {
        IncidentDetector { state }
    }

    pub fn state(&self) -> &IncidentState {
        &self.state
    }

    /// Verdicts of a batch of work. Those of a second already judged (a
    /// change that arrived after its deadline had passed) count in the next
    /// second to judge.
    pub fn add(&mut self, tallies: Tallies) {
        let s = &mut self.state;
        for ((mut second, table), tally) in tallies.0 {
            if let Some(closed) = s.closed {
                second = second.max(closed + 1);
            }
            if !s.open.contains_key(&second)
                && s.open.len() >= MAX_OPEN_SECONDS
                && let Some(&latest) = s.open.keys().next_back()
            {
                second = second.min(latest);
            }
            s.open
                .entry(second)
                .or_default()
                .entry(table.to_string())
                .or_default()
                .merge(tally);
        }
    }

    /// Judges every second that ends at or before `decided_until`: every
    /// verdict due by then has been handed over.
    pub fn advance(
        &mut self,
        decided_until: Millis,
        rules: &IncidentRules,
        out: &mut Vec<IncidentEvent>,
    ) {
        let last = decided_until.div_euclid(1000) - 1;
        while let Some(entry) = self.state.open.first_entry() {
            let second = *entry.key();
            if second > last {
                break;
            }
            let verdicts = entry.remove();
            self.judge_empty_until(second - 1, rules, out);
            self.judge(second, verdicts, rules, out);
        }
        self.judge_empty_until(last, rules, out);
    }

    /// Judges the seconds without verdicts up to `until`: one by one while
    /// some table has verdicts in its window or an incident open, then all
    /// at once (nothing can happen in them).
    fn judge_empty_until(
        &mut self,
        until: i64,
        rules: &IncidentRules,
        out: &mut Vec<IncidentEvent>,
    ) {
        let Some(closed) = self.state.closed else {
            return;
        };
        let mut second = closed + 1;
        while second <= until && !self.state.tables.is_empty() {
            self.judge(second, BTreeMap::new(), rules, out);
            second += 1;
        }
        if until > closed {
            self.state.closed = Some(until);
        }
    }

    /// Judges one second.
    fn judge(
        &mut self,
        second: i64,
        mut verdicts: BTreeMap<String, Second>,
        rules: &IncidentRules,
        out: &mut Vec<IncidentEvent>,
    ) {
        let s = &mut self.state;
        s.closed = Some(second);
        let time_ms = (second + 1) * 1000;
        let from = second - i64::from(rules.window_s.max(1)) + 1;
        for (table, tally) in std::mem::take(&mut verdicts) {
            if !s.tables.contains_key(&table)
                && !admit(&mut s.tables, rules.max_tables, second, &mut s.unfollowed)
            {
                s.unfollowed += tally.in_time + tally.violations.values().sum::<u64>();
                continue;
            }
            let scope = s.tables.entry(table).or_default();
            if let Some(incident) = &mut scope.incident {
                incident.add(&tally);
            }
            scope.push(second, tally);
        }
        for (table, scope) in &mut s.tables {
            scope.slide(from);
            let breached = scope.breached(rules);
            match &mut scope.incident {
                None if breached => {
                    let incident = scope.open(time_ms, rules);
                    out.push(IncidentEvent::new(
                        Phase::Opened,
                        table,
                        scope,
                        &incident,
                        time_ms,
                    ));
                    scope.incident = Some(incident);
                }
                None => {}
                Some(incident) => {
                    if let Some(t) = incident.episode.step(time_ms, !breached, rules.cadence) {
                        let phase = if t == Transition::Close {
                            Phase::Resolved
                        } else {
                            Phase::Updated
                        };
                        let incident = incident.clone();
                        out.push(IncidentEvent::new(phase, table, scope, &incident, time_ms));
                        if phase == Phase::Resolved {
                            scope.incident = None;
                        }
                    }
                }
            }
        }
        s.tables
            .retain(|_, scope| !scope.seconds.is_empty() || scope.incident.is_some());
    }
}

/// Makes room for one more table in `second`: forgets the quietest table
/// without an incident and without verdicts in `second` (its window's
/// verdicts are counted in `unfollowed`), or returns false when there is
/// none (the newcomer is not followed).
fn admit(
    tables: &mut BTreeMap<String, Scope>,
    max: usize,
    second: i64,
    unfollowed: &mut u64,
) -> bool {
    if tables.len() < max.max(1) {
        return true;
    }
    // The fewest decided changes in its window; ties: the first by name.
    let quietest = tables
        .iter()
        .filter(|(_, s)| {
            s.incident.is_none() && s.seconds.back().is_none_or(|(last, _)| *last < second)
        })
        .min_by_key(|(_, s)| s.decided())
        .map(|(t, _)| t.clone());
    match quietest.and_then(|t| tables.remove(&t)) {
        Some(forgotten) => {
            *unfollowed += forgotten.decided();
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests;
