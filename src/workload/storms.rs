//! Invalidation storms injected into a workload (`vigil gen --storms`), and
//! the shape of its normal traffic (`--bursts`).
//!
//! Each storm is one kind of [`ScopeType`], sized against the normal
//! traffic so that it crosses the default thresholds of its own scope and
//! of no other: the keys and services of a storm that is not about a prefix
//! or a service are spread so that no prefix and no service of it reaches a
//! storm rate. Storm invalidations name keys that no entity has, so they
//! never cover a change: the expected violations do not depend on them.

use serde::Serialize;

use crate::detect::storm::ScopeType;
use crate::model::Millis;

/// A spread scope value (prefix or service) of a storm carries at most this
/// many invalidations a second: below every default threshold.
const SPREAD_RATE: f64 = 40.0;
/// Keys of one bulk event.
const BULK_KEYS: usize = 100;
/// Keys a second of a bulk storm (the default bulk threshold is 1000/s).
const BULK_RATE: f64 = 1_500.0;
/// Invalidations a second of the hot key (the default threshold is 20/s).
const HOT_KEY_RATE: f64 = 50.0;
/// The hot key: in table 0's key space, of an id no entity has.
const HOT_KEY: &str = "t0:0:row";
/// Normal invalidations a second that the storms are sized against, at
/// least (below, a bulk storm would also be a global one).
pub const MIN_BASE_RATE: f64 = 500.0;

/// When storms happen.
#[derive(Debug, Clone, PartialEq)]
pub struct StormSchedule {
    /// Normal traffic before the first storm, for the baselines to learn.
    pub warmup_ms: i64,
    /// Length of each storm.
    pub length_ms: i64,
    /// Time between the onsets of two storms.
    pub every_ms: i64,
    /// The storms, in order.
    pub kinds: Vec<ScopeType>,
    /// Normal traffic after the last storm, for its end to be decided in
    /// event time.
    pub settle_ms: i64,
}

impl StormSchedule {
    /// `vigil gen --storms`: 90 s of normal traffic, then a storm of every
    /// kind for 20 s, one a minute.
    pub fn standard() -> Self {
        StormSchedule {
            warmup_ms: 90_000,
            length_ms: 20_000,
            every_ms: 60_000,
            kinds: ScopeType::ALL.to_vec(),
            settle_ms: 30_000,
        }
    }

    /// Event time, from the workload's start, until which the workload must
    /// go on: the last storm's end and the time to decide it.
    pub fn span_ms(&self) -> i64 {
        let n = self.kinds.len().max(1) as i64;
        self.warmup_ms + (n - 1) * self.every_ms + self.length_ms + self.settle_ms
    }
}

/// A storm that a correct engine reports, a line of
/// `expected-storms.ndjson`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedStorm {
    pub scope_type: ScopeType,
    pub scope: String,
    /// Event time of the storm's first and past its last invalidation.
    pub start_ms: Millis,
    pub end_ms: Millis,
}

/// The normal traffic that storms are sized against, in invalidated keys a
/// second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaseRates {
    pub global: f64,
    /// Of the prefix of the table a prefix storm hits.
    pub prefix: f64,
    pub wildcard: f64,
}

/// One storm's cache events: the `n`th is at `start + n / events_per_s`.
#[derive(Debug, Clone)]
pub struct Injection {
    pub expected: ExpectedStorm,
    /// Invalidated keys a second.
    rate: f64,
    keys_per_event: usize,
    next: u64,
    /// The table a prefix storm hits, and the number of tables.
    table: u32,
    tables: u32,
}

/// A cache event of a storm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormInvalidation {
    pub ts_ms: Millis,
    pub keys: Vec<String>,
    pub service: String,
}

impl Injection {
    /// The storms of `schedule` over a workload starting at `start_ms` with
    /// `base` traffic over `tables` tables; a prefix storm hits `table`.
    pub fn plan(
        schedule: &StormSchedule,
        start_ms: Millis,
        base: BaseRates,
        tables: u32,
        table: u32,
    ) -> Vec<Injection> {
        schedule
            .kinds
            .iter()
            .enumerate()
            .map(|(i, &scope_type)| {
                let start = start_ms + schedule.warmup_ms + i as i64 * schedule.every_ms;
                let (scope, rate, keys_per_event) = match scope_type {
                    // Total 9x the baseline; each prefix and service of it
                    // stays below the minimum rate.
                    ScopeType::Global => ("global".to_string(), 8.0 * base.global, 1),
                    // Total 7x the prefix's baseline, 4x the global one.
                    ScopeType::Prefix => (format!("t{table}"), 6.0 * base.prefix, 1),
                    // A new service at 2x the global rate, over every table.
                    ScopeType::Service => ("svc-runaway".to_string(), 2.0 * base.global, 1),
                    ScopeType::HotKey => (HOT_KEY.to_string(), HOT_KEY_RATE, 1),
                    ScopeType::Bulk => ("bulk".to_string(), BULK_RATE, BULK_KEYS),
                    ScopeType::Wildcard => {
                        ("wildcard".to_string(), (10.0 * base.wildcard).max(50.0), 1)
                    }
                };
                Injection {
                    expected: ExpectedStorm {
                        scope_type,
                        scope,
                        start_ms: start,
                        end_ms: start + schedule.length_ms,
                    },
                    rate,
                    keys_per_event,
                    next: 0,
                    table,
                    tables: tables.max(1),
                }
            })
            .collect()
    }

    /// The next cache event of the storm if it is stamped before `until`.
    pub fn next_before(&mut self, until: Millis) -> Option<StormInvalidation> {
        let events_per_s = self.rate / self.keys_per_event as f64;
        let ts_ms = self.expected.start_ms + (self.next as f64 * 1000.0 / events_per_s) as Millis;
        if ts_ms >= until.min(self.expected.end_ms) {
            return None;
        }
        let n = self.next;
        self.next += 1;
        let spread = (self.rate / SPREAD_RATE).ceil().max(1.0) as u64;
        let worker = |n: u64| format!("worker-{}", n % spread);
        let (keys, service) = match self.expected.scope_type {
            ScopeType::Global => (vec![format!("g{}:{n}", n % spread)], worker(n)),
            ScopeType::Prefix => (vec![format!("t{}:s{n}:row", self.table)], worker(n)),
            ScopeType::Service => (
                vec![format!("t{}:r{n}:row", n % u64::from(self.tables))],
                "svc-runaway".to_string(),
            ),
            ScopeType::HotKey => (vec![HOT_KEY.to_string()], "svc-t0".to_string()),
            ScopeType::Bulk => {
                let first = n * BULK_KEYS as u64;
                let keys = (first..first + BULK_KEYS as u64)
                    .map(|k| format!("b{}:{k}", k % spread))
                    .collect();
                (keys, worker(n))
            }
            ScopeType::Wildcard => (vec![format!("w{}:{n}:*", n % spread)], worker(n)),
        };
        Some(StormInvalidation {
            ts_ms,
            keys,
            service,
        })
    }
}

/// The shape of the normal traffic over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// A constant rate.
    Steady,
    /// A rate varying by +-50% over ten minutes (a day, compressed), with a
    /// 3x burst of two seconds at 150 s, 330 s and 510 s of every period:
    /// traffic that must raise no storm.
    Bursts,
}

const PERIOD_MS: i64 = 600_000;
const BURSTS_AT_MS: [i64; 3] = [150_000, 330_000, 510_000];
const BURST_MS: i64 = 2_000;
const BURST_FACTOR: f64 = 3.0;
const VARIATION: f64 = 0.5;

impl Traffic {
    /// The rate at `elapsed_ms` after the start, as a multiple of the
    /// average.
    pub fn factor(self, elapsed_ms: i64) -> f64 {
        match self {
            Traffic::Steady => 1.0,
            Traffic::Bursts => {
                let phase = elapsed_ms.rem_euclid(PERIOD_MS);
                let wave = 1.0
                    + VARIATION * (std::f64::consts::TAU * phase as f64 / PERIOD_MS as f64).sin();
                let burst = BURSTS_AT_MS
                    .iter()
                    .any(|&at| (at..at + BURST_MS).contains(&phase));
                if burst { wave * BURST_FACTOR } else { wave }
            }
        }
    }

    /// The highest [`Traffic::factor`].
    pub fn peak(self) -> f64 {
        match self {
            Traffic::Steady => 1.0,
            Traffic::Bursts => (1.0 + VARIATION) * BURST_FACTOR,
        }
    }
}
