//! Invalidation storms (DESIGN.md section 5): invalidation traffic far
//! above what caches can absorb, by scope — the global rate, a key prefix, a
//! source service, a single hot key, bulk events and wildcards. Pure:
//! invalidations and the watermark in, storm events out.
//!
//! Traffic is counted in one-second buckets of event time; a bucket is
//! judged once the watermark has passed it, so a file run is deterministic.
//! Memory is fixed whatever the number of distinct keys: a bucket counts
//! keys, prefixes and services in Count-Min sketches with their heaviest
//! entries on top ([`HeavyHitters`]), and only a bounded number of scope
//! values are followed across seconds.
//!
//! A scope is in a storm when its average rate over the last `for` seconds
//! exceeds its static threshold or its relative one (a multiple of a slowly
//! adapting baseline, never below a minimum rate). A storm is reported when
//! it starts, at most every `update_every` while it lasts, and when its rate
//! has stayed below `end_factor` times its starting threshold for `hold`
//! seconds (hysteresis: no flapping).

use std::collections::{BTreeMap, VecDeque};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::lifecycle::{self, Cadence, Episode, Transition, merge_top};
use super::sketch::{HeavyHitters, KeyHash, display_name};
use crate::model::{CacheKey, Millis, is_glob};

/// Keys followed per bucket in each heavy-hitter summary.
const BUCKET_TOP: usize = 32;
/// Counters per row of a bucket's sketches.
const BUCKET_WIDTH: usize = 1024;
/// Keys and services reported per storm.
const STORM_TOP: usize = 10;
/// Open buckets kept at most (a stalled watermark folds newer traffic into
/// the latest bucket rather than growing without bound).
const MAX_OPEN_BUCKETS: usize = 120;
/// Judged buckets kept, reset, for the next seconds to open, at most:
/// enough for what one watermark step closes and the next opens again.
const SPARE_BUCKETS: usize = 8;
/// Empty seconds judged one by one when the watermark jumps; beyond, the
/// baselines decay in one step.
const MAX_STEPPED_SECONDS: i64 = 600;
/// A followed scope value quiet this many seconds is forgotten.
const FORGET_AFTER_S: u32 = 300;
/// Half-life of baselines during the warm-up: they learn fast.
const WARMUP_HALF_LIFE_S: f64 = 10.0;

/// What a storm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeType {
    /// All invalidated keys.
    Global,
    /// Keys of one prefix (before the first `:`, or a configured pattern).
    Prefix,
    /// Invalidations from one `source_service`.
    Service,
    /// One cache key.
    HotKey,
    /// Keys invalidated by events of many keys.
    Bulk,
    /// Wildcard (glob) invalidations.
    Wildcard,
}

impl ScopeType {
    pub const ALL: [ScopeType; 6] = [
        ScopeType::Global,
        ScopeType::Prefix,
        ScopeType::Service,
        ScopeType::HotKey,
        ScopeType::Bulk,
        ScopeType::Wildcard,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeType::Global => "global",
            ScopeType::Prefix => "prefix",
            ScopeType::Service => "service",
            ScopeType::HotKey => "hot_key",
            ScopeType::Bulk => "bulk",
            ScopeType::Wildcard => "wildcard",
        }
    }
}

/// Thresholds of one scope type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Static threshold, per second; 0 turns it off.
    pub rate: f64,
    /// Relative threshold, a multiple of the baseline; 0 turns it off.
    pub factor: f64,
    /// Floor of the relative threshold.
    pub min_rate: f64,
    /// Seconds over which the average rate must exceed a threshold.
    pub sustain_s: u32,
    /// A storm ends once its rate has been below `end_factor` times its
    /// starting threshold for `hold_s` seconds.
    pub end_factor: f64,
    pub hold_s: u32,
}

impl Thresholds {
    /// The lowest rate that makes a storm in a scope with this baseline
    /// (`None` when neither threshold applies).
    fn threshold(&self, baseline: f64, warm: bool) -> Option<f64> {
        let fixed = (self.rate > 0.0).then_some(self.rate);
        let relative =
            (self.factor > 0.0 && warm).then(|| (self.factor * baseline).max(self.min_rate));
        match (fixed, relative) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The smallest per-second count worth following a scope value for.
    fn admission(&self) -> f64 {
        let fixed = if self.rate > 0.0 {
            self.rate
        } else {
            f64::INFINITY
        };
        let relative = if self.factor > 0.0 {
            self.min_rate
        } else {
            f64::INFINITY
        };
        fixed.min(relative) / 2.0
    }
}

/// The rules of storm detection.
#[derive(Debug, Clone)]
pub struct StormRules {
    /// Per [`ScopeType`], in the order of [`ScopeType::ALL`].
    pub thresholds: [Thresholds; 6],
    /// Patterns whose first capture group is a key's prefix; without a
    /// match (or patterns), the part before the first `:`.
    pub prefix_patterns: Vec<Regex>,
    /// An event with at least this many keys is a bulk event.
    pub bulk_min_keys: usize,
    pub update_every_ms: i64,
    /// Seconds during which baselines learn and relative thresholds wait.
    pub warmup_s: u32,
    pub baseline_half_life_s: f64,
    /// Scope values followed per scope type, at most.
    pub max_tracked: usize,
}

impl StormRules {
    fn thresholds(&self, t: ScopeType) -> &Thresholds {
        &self.thresholds[t as usize]
    }

    /// The prefix of a key.
    pub fn prefix_of<'k>(&self, key: &'k str) -> &'k str {
        for re in &self.prefix_patterns {
            if let Some(m) = re.captures(key).and_then(|c| c.get(1)) {
                return m.as_str();
            }
        }
        match key.bytes().position(|b| b == b':') {
            Some(colon) => &key[..colon],
            None => key,
        }
    }
}

/// One second of invalidation traffic.
#[derive(Debug, Clone)]
struct Bucket {
    global: u64,
    bulk: u64,
    wildcard: u64,
    keys: HeavyHitters,
    prefixes: HeavyHitters,
    services: HeavyHitters,
    /// `prefix \0 service` and `key \0 service`, for the top services of a
    /// prefix or key storm and the top keys of a service storm.
    prefix_services: HeavyHitters,
    key_services: HeavyHitters,
    /// Keys of bulk events, and their services.
    bulk_keys: HeavyHitters,
    bulk_services: HeavyHitters,
    /// Glob patterns, and their services.
    globs: HeavyHitters,
    glob_services: HeavyHitters,
}

impl Bucket {
    fn new() -> Self {
        let hh = || HeavyHitters::new(BUCKET_TOP, BUCKET_WIDTH);
        Bucket {
            global: 0,
            bulk: 0,
            wildcard: 0,
            keys: hh(),
            prefixes: hh(),
            services: hh(),
            prefix_services: hh(),
            key_services: hh(),
            bulk_keys: hh(),
            bulk_services: hh(),
            globs: hh(),
            glob_services: hh(),
        }
    }

    fn summaries(&self) -> [&HeavyHitters; 9] {
        [
            &self.keys,
            &self.prefixes,
            &self.services,
            &self.prefix_services,
            &self.key_services,
            &self.bulk_keys,
            &self.bulk_services,
            &self.globs,
            &self.glob_services,
        ]
    }

    fn memory_bytes(&self) -> usize {
        self.summaries().iter().map(|h| h.memory_bytes()).sum()
    }

    /// Empties the bucket for another second, keeping its buffers.
    fn reset(&mut self) {
        // Every key observed is counted in `global`: a bucket that counted
        // nothing has nothing to clear.
        if self.global > 0 {
            for h in [
                &mut self.keys,
                &mut self.prefixes,
                &mut self.services,
                &mut self.prefix_services,
                &mut self.key_services,
                &mut self.bulk_keys,
                &mut self.bulk_services,
                &mut self.globs,
                &mut self.glob_services,
            ] {
                h.clear();
            }
        }
        self.global = 0;
        self.bulk = 0;
        self.wildcard = 0;
    }
}

/// A storm in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Storm {
    pub start_ms: Millis,
    pub threshold: f64,
    pub baseline: f64,
    pub peak: f64,
    pub rate: f64,
    pub count: u64,
    /// When it was last reported, how long it has been calm.
    episode: Episode,
    pub top_keys: Vec<(String, u64)>,
    pub top_services: Vec<(String, u64)>,
}

/// A followed scope: its recent rates, baseline and storm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Track {
    name: String,
    hash: (u64, u64),
    /// Counts of the last `sustain` seconds, oldest first.
    recent: VecDeque<u64>,
    baseline: f64,
    /// Seconds of the warm-up the baseline has learned from.
    learned_s: u32,
    storm: Option<Storm>,
    /// Seconds in a row below the admission rate.
    quiet_s: u32,
}

impl Track {
    fn new(name: String, hash: KeyHash) -> Self {
        Track {
            name,
            hash: (hash.0, hash.1),
            recent: VecDeque::new(),
            baseline: 0.0,
            learned_s: 0,
            storm: None,
            quiet_s: 0,
        }
    }

    fn key_hash(&self) -> KeyHash {
        KeyHash(self.hash.0, self.hash.1)
    }
}

/// Where a storm is, what it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Started,
    Updated,
    Ended,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Started, Phase::Updated, Phase::Ended];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Started => "started",
            Phase::Updated => "updated",
            Phase::Ended => "ended",
        }
    }
}

/// A storm event (`vigil.storm.started|updated|ended`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StormEvent {
    pub id: String,
    pub phase: Phase,
    pub scope_type: ScopeType,
    pub scope: String,
    /// Event time of the report.
    pub time_ms: Millis,
    pub start_ms: Millis,
    pub duration_ms: i64,
    /// Invalidations in the last second.
    pub rate: f64,
    pub peak: f64,
    pub baseline: f64,
    pub threshold: f64,
    /// Invalidations during the storm.
    pub count: u64,
    /// The heaviest keys and services of the storm with their (estimated)
    /// counts. Heavy entries are always found; which of many equally light
    /// ones make the list depends on arrival order.
    pub top_keys: Vec<(String, u64)>,
    pub top_services: Vec<(String, u64)>,
}

impl StormEvent {
    fn new(
        phase: Phase,
        scope_type: ScopeType,
        scope: &str,
        storm: &Storm,
        time_ms: Millis,
    ) -> Self {
        let subject = format!("{}:{scope}", scope_type.as_str());
        StormEvent {
            id: lifecycle::event_id("storm", phase.as_str(), &subject, storm.start_ms, time_ms),
            phase,
            scope_type,
            scope: scope.to_string(),
            time_ms,
            start_ms: storm.start_ms,
            duration_ms: time_ms - storm.start_ms,
            rate: storm.rate,
            peak: storm.peak,
            baseline: storm.baseline,
            threshold: storm.threshold,
            count: storm.count,
            top_keys: storm.top_keys.clone(),
            top_services: storm.top_services.clone(),
        }
    }
}

/// What a bucket gives one storm: its top keys and services that second.
type Tops = (Vec<(String, u64)>, Vec<(String, u64)>);

/// Adds a second's top entries to a storm's, keeping the heaviest.
fn merge(into: &mut Vec<(String, u64)>, from: Vec<(String, u64)>) {
    merge_top(into, from, STORM_TOP);
}

/// The persistent state of storm detection (everything but the seconds not
/// yet judged, which the inputs after a restart fill again).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StormState {
    /// The last second judged.
    closed: Option<i64>,
    /// The first second judged (start of the warm-up).
    first: Option<i64>,
    global: Option<Track>,
    bulk: Option<Track>,
    wildcard: Option<Track>,
    /// Followed prefixes, services and hot keys, by key hash.
    prefixes: BTreeMap<u64, Track>,
    services: BTreeMap<u64, Track>,
    hot_keys: BTreeMap<u64, Track>,
}

impl StormState {
    /// The storms in progress, by scope type then scope, each as an update
    /// at the last second judged would report it.
    pub fn in_progress(&self) -> Vec<StormEvent> {
        let Some(closed) = self.closed else {
            return Vec::new();
        };
        let mut tracks: Vec<(ScopeType, &Track)> = Vec::new();
        tracks.extend(self.global.iter().map(|t| (ScopeType::Global, t)));
        for (scope_type, followed) in [
            (ScopeType::Prefix, &self.prefixes),
            (ScopeType::Service, &self.services),
            (ScopeType::HotKey, &self.hot_keys),
        ] {
            let start = tracks.len();
            tracks.extend(followed.values().map(|t| (scope_type, t)));
            tracks[start..].sort_by(|a, b| a.1.name.cmp(&b.1.name));
        }
        tracks.extend(self.bulk.iter().map(|t| (ScopeType::Bulk, t)));
        tracks.extend(self.wildcard.iter().map(|t| (ScopeType::Wildcard, t)));
        tracks
            .into_iter()
            .filter_map(|(scope_type, track)| {
                let storm = track.storm.as_ref()?;
                let time_ms = (closed + 1) * 1000;
                Some(StormEvent::new(
                    Phase::Updated,
                    scope_type,
                    &track.name,
                    storm,
                    time_ms,
                ))
            })
            .collect()
    }
}

/// Storm detection: feed it invalidations, advance it to the watermark.
#[derive(Debug, Default)]
pub struct StormDetector {
    state: StormState,
    open: BTreeMap<i64, Bucket>,
    /// Judged buckets, reset: the next seconds to open take their buffers
    /// rather than allocating and zeroing new ones.
    spare: Vec<Bucket>,
    /// Per scope type, the count of its busiest followed scope in the last
    /// second judged.
    last_rates: [u64; 6],
}

impl StormDetector {
    pub fn new(state: StormState) -> Self {
        StormDetector {
            state,
            ..Self::default()
        }
    }

    pub fn state(&self) -> &StormState {
        &self.state
    }

    /// The last second judged.
    pub fn judged_until(&self) -> Option<i64> {
        self.state.closed
    }

    /// Per scope type (in the order of [`ScopeType::ALL`]), the invalidations
    /// of its busiest followed scope in the last second judged.
    pub fn last_rates(&self) -> [u64; 6] {
        self.last_rates
    }

    /// Per scope type, the storms in progress.
    pub fn active(&self) -> [usize; 6] {
        let s = &self.state;
        let storms = |t: Option<&Track>| usize::from(t.is_some_and(|t| t.storm.is_some()));
        let in_storm = |m: &BTreeMap<u64, Track>| m.values().filter(|t| t.storm.is_some()).count();
        [
            storms(s.global.as_ref()),
            in_storm(&s.prefixes),
            in_storm(&s.services),
            in_storm(&s.hot_keys),
            storms(s.bulk.as_ref()),
            storms(s.wildcard.as_ref()),
        ]
    }

    /// An invalidation event: its event time, keys and service.
    pub fn observe(
        &mut self,
        ts: Millis,
        keys: &[CacheKey],
        service: Option<&str>,
        rules: &StormRules,
    ) {
        let mut second = ts.div_euclid(1000);
        if let Some(closed) = self.state.closed {
            // Behind the watermark: counted in the next second to judge.
            second = second.max(closed + 1);
        }
        if !self.open.contains_key(&second)
            && self.open.len() >= MAX_OPEN_BUCKETS
            && let Some(&latest) = self.open.keys().next_back()
        {
            second = second.min(latest);
        }
        let spare = &mut self.spare;
        let bucket = self
            .open
            .entry(second)
            .or_insert_with(|| spare.pop().unwrap_or_else(Bucket::new));
        let bulk = keys.len() >= rules.bulk_min_keys;
        let service = service.map(|s| (s, KeyHash::of(s.as_bytes())));
        for key in keys {
            let glob = is_glob(key);
            let prefix = rules.prefix_of(key);
            let key_hash = KeyHash::of(key.as_bytes());
            let key_name = || display_name(key);
            bucket.global += 1;
            bucket.prefixes.add(prefix, 1);
            if glob {
                bucket.wildcard += 1;
                bucket.globs.add_hashed(key_hash, key_name, 1);
            } else {
                bucket.keys.add_hashed(key_hash, key_name, 1);
            }
            if bulk {
                bucket.bulk += 1;
                bucket.bulk_keys.add_hashed(key_hash, key_name, 1);
            }
            if let Some((s, hash)) = service {
                let named = || display_name(s);
                bucket.services.add_hashed(hash, named, 1);
                bucket.prefix_services.add_pair(prefix, s, 1);
                if glob {
                    bucket.glob_services.add_hashed(hash, named, 1);
                } else {
                    bucket.key_services.add_pair(key, s, 1);
                }
                if bulk {
                    bucket.bulk_services.add_hashed(hash, named, 1);
                }
            }
        }
    }

    /// Judges every second that the watermark `wm` has passed.
    pub fn advance(&mut self, wm: Millis, rules: &StormRules, out: &mut Vec<StormEvent>) {
        let last = wm.div_euclid(1000) - 1;
        while let Some((&second, _)) = self.open.first_key_value() {
            if second > last {
                break;
            }
            self.close_empty_until(second - 1, rules, out);
            let bucket = self.open.remove(&second).expect("present");
            self.close(second, &bucket, rules, out);
            self.recycle(bucket);
        }
        self.close_empty_until(last, rules, out);
    }

    /// Keeps a judged bucket, reset, for a later second (or frees it when
    /// enough are kept).
    fn recycle(&mut self, mut bucket: Bucket) {
        if self.spare.len() < SPARE_BUCKETS {
            bucket.reset();
            self.spare.push(bucket);
        }
    }

    /// Memory held by the seconds not yet judged, the buckets kept for the
    /// next ones and the followed scopes.
    pub fn memory_bytes(&self) -> usize {
        let buckets: usize = self
            .open
            .values()
            .chain(&self.spare)
            .map(Bucket::memory_bytes)
            .sum();
        let tracks =
            self.state.prefixes.len() + self.state.services.len() + self.state.hot_keys.len() + 3;
        buckets + tracks * (std::mem::size_of::<Track>() + 1024)
    }

    /// Judges the empty seconds up to `until`.
    fn close_empty_until(&mut self, until: i64, rules: &StormRules, out: &mut Vec<StormEvent>) {
        let Some(closed) = self.state.closed else {
            return;
        };
        let gap = until - closed;
        if gap <= 0 {
            return;
        }
        let stepped = gap.min(MAX_STEPPED_SECONDS);
        let empty = self.spare.pop().unwrap_or_else(Bucket::new);
        for second in closed + 1..=closed + stepped {
            self.close(second, &empty, rules, out);
        }
        self.recycle(empty);
        let rest = gap - stepped;
        if rest > 0 {
            let alpha = alpha(rules.baseline_half_life_s);
            let decay = (1.0 - alpha).powf(rest as f64);
            for track in self.tracks_mut() {
                track.baseline *= decay;
                track.quiet_s = track
                    .quiet_s
                    .saturating_add(rest.min(i64::from(u32::MAX)) as u32);
            }
            self.state.closed = Some(until);
        }
    }

    fn tracks_mut(&mut self) -> impl Iterator<Item = &mut Track> {
        let s = &mut self.state;
        s.global
            .iter_mut()
            .chain(s.bulk.iter_mut())
            .chain(s.wildcard.iter_mut())
            .chain(s.prefixes.values_mut())
            .chain(s.services.values_mut())
            .chain(s.hot_keys.values_mut())
    }

    /// Judges one second.
    fn close(&mut self, second: i64, b: &Bucket, rules: &StormRules, out: &mut Vec<StormEvent>) {
        let first = *self.state.first.get_or_insert(second);
        self.state.closed = Some(second);
        let warm = second - first >= i64::from(rules.warmup_s);
        let time_ms = (second + 1) * 1000;
        let mut rates = [0u64; 6];
        let mut judge = |t: ScopeType,
                         track: &mut Track,
                         count: u64,
                         tops: &dyn Fn() -> Tops,
                         out: &mut Vec<StormEvent>| {
            rates[t as usize] = rates[t as usize].max(count);
            step(t, track, count, tops, warm, time_ms, rules, out);
        };
        for (t, count) in [
            (ScopeType::Global, b.global),
            (ScopeType::Bulk, b.bulk),
            (ScopeType::Wildcard, b.wildcard),
        ] {
            let slot = match t {
                ScopeType::Global => &mut self.state.global,
                ScopeType::Bulk => &mut self.state.bulk,
                _ => &mut self.state.wildcard,
            };
            let track = slot.get_or_insert_with(|| {
                Track::new(t.as_str().to_string(), KeyHash::of(t.as_str().as_bytes()))
            });
            let tops = || match t {
                ScopeType::Global => (names(&b.keys), names(&b.services)),
                ScopeType::Bulk => (names(&b.bulk_keys), names(&b.bulk_services)),
                _ => (names(&b.globs), names(&b.glob_services)),
            };
            judge(t, track, count, &tops, out);
        }
        for (t, source) in [
            (ScopeType::Prefix, &b.prefixes),
            (ScopeType::Service, &b.services),
            (ScopeType::HotKey, &b.keys),
        ] {
            let admission = rules.thresholds(t).admission();
            let tracks = match t {
                ScopeType::Prefix => &mut self.state.prefixes,
                ScopeType::Service => &mut self.state.services,
                _ => &mut self.state.hot_keys,
            };
            for c in source.top() {
                if c.count as f64 >= admission && !tracks.contains_key(&c.id) {
                    admit(tracks, c.id, &c.name, rules.max_tracked);
                }
            }
            for track in tracks.values_mut() {
                let count = source.estimate(track.key_hash());
                let name = track.name.clone();
                let tops = || match t {
                    ScopeType::Prefix => (
                        names(&b.keys)
                            .into_iter()
                            .filter(|(k, _)| rules.prefix_of(k) == name)
                            .collect(),
                        split_pairs(&b.prefix_services, &name, true),
                    ),
                    ScopeType::Service => (
                        split_pairs(&b.key_services, &name, false),
                        vec![(name.clone(), count)],
                    ),
                    _ => (
                        vec![(name.clone(), count)],
                        split_pairs(&b.key_services, &name, true),
                    ),
                };
                judge(t, track, count, &tops, out);
            }
            tracks.retain(|_, track| track.storm.is_some() || track.quiet_s < FORGET_AFTER_S);
        }
        self.last_rates = rates;
    }
}

/// The heaviest entries of a summary, as (name, count).
fn names(h: &HeavyHitters) -> Vec<(String, u64)> {
    h.top()
        .into_iter()
        .map(|c| (c.name.to_string(), c.count))
        .collect()
}

/// From a summary of `a \0 b` pairs, the other halves of the pairs whose
/// first (`first`) or second half is `name`.
fn split_pairs(h: &HeavyHitters, name: &str, first: bool) -> Vec<(String, u64)> {
    h.top()
        .into_iter()
        .filter_map(|c| {
            let (a, b) = c.name.split_once('\0')?;
            let (this, other) = if first { (a, b) } else { (b, a) };
            (this == name).then(|| (other.to_string(), c.count))
        })
        .collect()
}

/// Follows a new scope value, forgetting the quietest one if full.
fn admit(tracks: &mut BTreeMap<u64, Track>, id: u64, name: &str, max: usize) {
    if tracks.len() >= max {
        let quietest = tracks
            .iter()
            .filter(|(_, t)| t.storm.is_none())
            .max_by_key(|(_, t)| t.quiet_s)
            .map(|(id, _)| *id);
        match quietest {
            Some(q) => {
                tracks.remove(&q);
            }
            None => return,
        }
    }
    tracks.insert(
        id,
        Track::new(display_name(name).to_string(), KeyHash::of(name.as_bytes())),
    );
}

/// The per-second weight of a new observation in a baseline of this
/// half-life.
fn alpha(half_life_s: f64) -> f64 {
    1.0 - 0.5f64.powf(1.0 / half_life_s.max(1.0))
}

/// One second of one scope: baseline, storm start, updates and end.
#[allow(clippy::too_many_arguments)]
fn step(
    t: ScopeType,
    track: &mut Track,
    count: u64,
    tops: &dyn Fn() -> Tops,
    warm: bool,
    time_ms: Millis,
    rules: &StormRules,
    out: &mut Vec<StormEvent>,
) {
    let th = rules.thresholds(t);
    let sustain = th.sustain_s.max(1) as usize;
    track.recent.push_back(count);
    while track.recent.len() > sustain {
        track.recent.pop_front();
    }
    if (count as f64) < th.admission() {
        track.quiet_s = track.quiet_s.saturating_add(1);
    } else {
        track.quiet_s = 0;
    }
    match &mut track.storm {
        None => {
            let average = track.recent.iter().sum::<u64>() as f64 / sustain as f64;
            match th.threshold(track.baseline, warm) {
                Some(threshold) if average > threshold => {
                    let (keys, services) = tops();
                    // It began with the first second of the window above
                    // the threshold.
                    let above = track
                        .recent
                        .iter()
                        .position(|&c| c as f64 > threshold)
                        .unwrap_or(0);
                    let storming = track.recent.range(above..);
                    let mut storm = Storm {
                        start_ms: time_ms - (track.recent.len() - above) as i64 * 1000,
                        threshold,
                        baseline: track.baseline,
                        peak: storming.clone().copied().max().unwrap_or(0) as f64,
                        rate: count as f64,
                        count: storming.sum(),
                        episode: Episode::opened(time_ms),
                        top_keys: Vec::new(),
                        top_services: Vec::new(),
                    };
                    merge(&mut storm.top_keys, keys);
                    merge(&mut storm.top_services, services);
                    out.push(StormEvent::new(
                        Phase::Started,
                        t,
                        &track.name,
                        &storm,
                        time_ms,
                    ));
                    track.storm = Some(storm);
                }
                _ => {
                    // During the warm-up, the plain average of the seconds
                    // seen (a short warm-up learns the whole rate); then a
                    // slowly adapting one.
                    let weight = if warm {
                        alpha(rules.baseline_half_life_s)
                    } else {
                        track.learned_s = track.learned_s.saturating_add(1);
                        alpha(WARMUP_HALF_LIFE_S).max(1.0 / f64::from(track.learned_s))
                    };
                    track.baseline += weight * (count as f64 - track.baseline);
                }
            }
        }
        Some(storm) => {
            storm.count += count;
            storm.rate = count as f64;
            storm.peak = storm.peak.max(count as f64);
            if count > 0 {
                let (keys, services) = tops();
                merge(&mut storm.top_keys, keys);
                merge(&mut storm.top_services, services);
            }
            let calm = (count as f64) < th.end_factor * storm.threshold;
            let cadence = Cadence {
                update_every_ms: rules.update_every_ms,
                hold_s: th.hold_s,
            };
            match storm.episode.step(time_ms, calm, cadence) {
                Some(Transition::Close) => {
                    out.push(StormEvent::new(
                        Phase::Ended,
                        t,
                        &track.name,
                        storm,
                        time_ms,
                    ));
                    track.storm = None;
                }
                Some(_) => out.push(StormEvent::new(
                    Phase::Updated,
                    t,
                    &track.name,
                    storm,
                    time_ms,
                )),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
