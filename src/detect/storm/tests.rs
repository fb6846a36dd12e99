//! Storm detection on synthetic traffic: each scope's storm is found, with
//! its timing; bursts and slow variation raise nothing; the verdicts do not
//! depend on arrival order; memory stays bounded whatever the number of
//! distinct keys, and seconds reuse the buffers of the judged ones.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::*;
use crate::model::CacheKey;

/// Counts the bytes each thread has allocated and not freed, so that a test
/// can measure what a structure holds, and its allocations of a sketch's
/// buffer or more.
struct Counting;

/// The cells of one bucket sketch, in bytes.
const SKETCH_BYTES: usize = BUCKET_WIDTH * 4 * std::mem::size_of::<u32>();

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static LARGE: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + layout.size() as isize));
        if layout.size() >= SKETCH_BYTES {
            LARGE.with(|l| l.set(l.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.with(|l| l.set(l.get() - layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + new_size as isize - layout.size() as isize));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE.with(Cell::get)
}

/// Allocations of at least [`SKETCH_BYTES`] this thread has made.
fn large_allocations() -> usize {
    LARGE.with(Cell::get)
}

fn rules() -> StormRules {
    let relative = |min_rate| Thresholds {
        rate: 0.0,
        factor: 5.0,
        min_rate,
        sustain_s: 3,
        end_factor: 0.8,
        hold_s: 10,
    };
    StormRules {
        thresholds: [
            relative(100.0),
            relative(50.0),
            relative(50.0),
            Thresholds {
                rate: 20.0,
                factor: 0.0,
                ..relative(0.0)
            },
            Thresholds {
                rate: 1000.0,
                sustain_s: 1,
                ..relative(1000.0)
            },
            relative(10.0),
        ],
        prefix_patterns: Vec::new(),
        bulk_min_keys: 20,
        update_every_ms: 5_000,
        warmup_s: 60,
        baseline_half_life_s: 1_800.0,
        max_tracked: 64,
    }
}

/// One invalidation event of synthetic traffic.
#[derive(Debug, Clone)]
struct Inv {
    ts: Millis,
    keys: Vec<CacheKey>,
    service: Option<&'static str>,
}

const SERVICES: [&str; 3] = ["users-api", "orders-api", "search"];
const PREFIXES: [&str; 3] = ["user", "order", "product"];

/// Background traffic: `per_s(second)` single-key invalidations a second,
/// spread over prefixes and services, for `seconds`.
fn background(seconds: i64, per_s: impl Fn(i64) -> u64) -> Vec<Inv> {
    let mut out = Vec::new();
    let mut n = 0u64;
    for s in 0..seconds {
        let count = per_s(s);
        for i in 0..count {
            n += 1;
            let p = (n % 3) as usize;
            out.push(Inv {
                ts: s * 1000 + (i * 1000 / count) as i64,
                keys: vec![CacheKey::from(format!("{}:{}", PREFIXES[p], n % 5000))],
                service: Some(SERVICES[(n / 3 % 3) as usize]),
            });
        }
    }
    out
}

/// `per_s` extra events a second over [from, to) seconds, made by `make`.
fn extra(
    from: i64,
    to: i64,
    per_s: u64,
    make: impl Fn(u64) -> (Vec<CacheKey>, Option<&'static str>),
) -> Vec<Inv> {
    let mut out = Vec::new();
    for s in from..to {
        for i in 0..per_s {
            let (keys, service) = make(s as u64 * per_s + i);
            out.push(Inv {
                ts: s * 1000 + (i * 1000 / per_s) as i64,
                keys,
                service,
            });
        }
    }
    out
}

/// Runs the detector over the traffic in time order, advancing the
/// watermark to two seconds behind the latest event after each second, and
/// to the end of time at the end.
fn detect(traffic: Vec<Inv>) -> Vec<StormEvent> {
    detect_with(&rules(), traffic)
}

fn detect_with(rules: &StormRules, mut traffic: Vec<Inv>) -> Vec<StormEvent> {
    traffic.sort_by_key(|i| i.ts);
    let mut d = StormDetector::default();
    let mut out = Vec::new();
    let mut second = i64::MIN;
    for inv in &traffic {
        if inv.ts / 1000 != second {
            second = inv.ts / 1000;
            d.advance(inv.ts - 2_000, rules, &mut out);
        }
        d.observe(inv.ts, &inv.keys, inv.service, rules);
    }
    d.advance(Millis::MAX, rules, &mut out);
    out
}

fn steady(s: i64) -> u64 {
    let _ = s;
    300
}

/// Asserts one storm of the scope: started within 5 s of `onset`, ended
/// within 30 s of `end`, with updates in between.
fn assert_storm(
    events: &[StormEvent],
    t: ScopeType,
    scope: &str,
    onset: Millis,
    end: Millis,
) -> Vec<StormEvent> {
    let of: Vec<StormEvent> = events
        .iter()
        .filter(|e| e.scope_type == t && e.scope == scope)
        .cloned()
        .collect();
    let started: Vec<&StormEvent> = of.iter().filter(|e| e.phase == Phase::Started).collect();
    let ended: Vec<&StormEvent> = of.iter().filter(|e| e.phase == Phase::Ended).collect();
    assert_eq!(
        started.len(),
        1,
        "{t:?} {scope}: one start, no flapping: {of:#?}"
    );
    assert_eq!(ended.len(), 1, "{t:?} {scope}: one end: {of:#?}");
    let (s, e) = (started[0], ended[0]);
    assert!(
        s.time_ms >= onset && s.time_ms <= onset + 5_000,
        "{t:?} started at {} for onset {onset}",
        s.time_ms
    );
    assert!(
        e.time_ms >= end && e.time_ms <= end + 30_000,
        "{t:?} ended at {} for end {end}",
        e.time_ms
    );
    assert!(
        of.iter().any(|x| x.phase == Phase::Updated),
        "{t:?}: updates while it lasts"
    );
    for u in of.iter().filter(|x| x.phase == Phase::Updated) {
        assert!(u.time_ms > s.time_ms && u.time_ms < e.time_ms);
    }
    assert!(
        e.peak >= e.threshold,
        "{t:?}: peak {} above threshold {}",
        e.peak,
        e.threshold
    );
    assert!(e.count > 0 && e.duration_ms == e.time_ms - e.start_ms);
    assert!(!e.top_keys.is_empty(), "{t:?}: top keys");
    of
}

fn no_storms_but(events: &[StormEvent], allowed: &[(ScopeType, &str)]) {
    let others: Vec<&StormEvent> = events
        .iter()
        .filter(|e| {
            !allowed
                .iter()
                .any(|(t, s)| e.scope_type == *t && e.scope == *s)
        })
        .collect();
    assert!(others.is_empty(), "unexpected storms: {others:#?}");
}

#[test]
fn steady_traffic_with_bursts_and_slow_variation_raises_no_storm() {
    // ±50% over ten minutes, and a 3x burst of two seconds every 47 s.
    let traffic = background(900, |s| {
        let wave = 1.0 + 0.5 * (s as f64 * std::f64::consts::TAU / 600.0).sin();
        let burst = if s % 47 < 2 { 3.0 } else { 1.0 };
        (300.0 * wave * burst) as u64
    });
    let events = detect(traffic);
    assert!(events.is_empty(), "{events:#?}");
}

#[test]
fn a_global_spike_is_a_global_storm_with_its_top_keys_and_services() {
    let mut traffic = background(240, steady);
    traffic.extend(extra(100, 130, 3_000, |n| {
        (
            vec![CacheKey::from(format!("product:{}", n % 997))],
            Some("search"),
        )
    }));
    let events = detect(traffic);
    let storm = assert_storm(&events, ScopeType::Global, "global", 100_000, 130_000);
    let end = storm.last().unwrap();
    assert!(
        end.baseline > 200.0 && end.baseline < 400.0,
        "baseline {}",
        end.baseline
    );
    assert!(end.peak >= 3_000.0);
    assert_eq!(end.top_services[0].0, "search");
    assert!(end.top_keys[0].0.starts_with("product:"));
    // The spike is also a storm of its prefix and service.
    assert_storm(&events, ScopeType::Prefix, "product", 100_000, 130_000);
    assert_storm(&events, ScopeType::Service, "search", 100_000, 130_000);
}

#[test]
fn a_prefix_storm_is_reported_for_its_prefix_only() {
    let mut traffic = background(240, steady);
    traffic.extend(extra(100, 120, 600, |n| {
        (vec![CacheKey::from(format!("order:{n}"))], None)
    }));
    let events = detect(traffic);
    assert_storm(&events, ScopeType::Prefix, "order", 100_000, 120_000);
    no_storms_but(&events, &[(ScopeType::Prefix, "order")]);
}

#[test]
fn a_new_service_invalidating_in_a_loop_is_a_service_storm() {
    let mut traffic = background(240, steady);
    traffic.extend(extra(100, 120, 200, |n| {
        (
            vec![CacheKey::from(format!("user:{}", n % 300))],
            Some("runaway-job"),
        )
    }));
    let events = detect(traffic);
    let storm = assert_storm(&events, ScopeType::Service, "runaway-job", 100_000, 120_000);
    assert_eq!(storm[0].top_services[0].0, "runaway-job");
    no_storms_but(&events, &[(ScopeType::Service, "runaway-job")]);
}

#[test]
fn a_key_invalidated_many_times_a_second_is_a_hot_key() {
    let mut traffic = background(240, steady);
    traffic.extend(extra(100, 120, 50, |_| {
        (vec![CacheKey::from("user:42")], Some("users-api"))
    }));
    let events = detect(traffic);
    let storm = assert_storm(&events, ScopeType::HotKey, "user:42", 100_000, 120_000);
    assert_eq!(storm[0].top_keys[0].0, "user:42");
    assert_eq!(storm[0].top_services[0].0, "users-api");
    no_storms_but(&events, &[(ScopeType::HotKey, "user:42")]);
}

#[test]
fn bulk_events_and_wildcards_are_counted_by_their_fan_out() {
    let mut traffic = background(400, steady);
    traffic.extend(extra(100, 120, 20, |n| {
        let keys = (0..100)
            .map(|i| CacheKey::from(format!("user:{}", n * 100 + i)))
            .collect();
        (keys, Some("batch-import"))
    }));
    traffic.extend(extra(250, 270, 40, |_| {
        (vec![CacheKey::from("product:*")], Some("admin"))
    }));
    let events = detect(traffic);
    assert_storm(&events, ScopeType::Bulk, "bulk", 100_000, 120_000);
    let wildcard = assert_storm(&events, ScopeType::Wildcard, "wildcard", 250_000, 270_000);
    assert_eq!(wildcard[0].top_keys[0].0, "product:*");
}

#[test]
fn nothing_is_reported_during_the_warm_up() {
    let mut traffic = background(200, steady);
    traffic.extend(extra(10, 30, 3_000, |n| {
        (vec![CacheKey::from(format!("user:{n}"))], None)
    }));
    let events = detect(traffic);
    assert!(
        events.iter().all(|e| e.scope_type != ScopeType::Global),
        "relative thresholds wait for the baseline: {events:#?}"
    );
}

#[test]
fn a_short_warm_up_learns_the_whole_baseline() {
    let rules = StormRules {
        warmup_s: 5,
        ..rules()
    };
    // 300/s for the warm-up, then three times as much: not five times.
    let tripled = |s: i64| if s < 6 { 300 } else { 900 };
    let events = detect_with(&rules, background(60, tripled));
    assert!(events.is_empty(), "{events:#?}");
    let sixfold = |s: i64| if s < 6 { 300 } else { 1_800 };
    let events = detect_with(&rules, background(60, sixfold));
    assert!(
        events
            .iter()
            .any(|e| e.scope_type == ScopeType::Global && e.phase == Phase::Started),
        "{events:#?}"
    );
}

#[test]
fn verdicts_do_not_depend_on_arrival_order_within_the_lateness() {
    let mut traffic = background(200, steady);
    traffic.extend(extra(100, 120, 2_000, |n| {
        (vec![CacheKey::from(format!("user:{n}"))], Some("x"))
    }));
    let sorted = detect(traffic.clone());
    // Shuffle within windows of one second: still within the lateness.
    let rules = rules();
    let mut d = StormDetector::default();
    let mut shuffled = Vec::new();
    traffic.sort_by_key(|i| i.ts);
    let mut seed = 3u64;
    let mut rng = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut i = 0;
    while i < traffic.len() {
        let second = traffic[i].ts / 1000;
        let mut j = i;
        while j < traffic.len() && traffic[j].ts / 1000 <= second {
            j += 1;
        }
        let window = &mut traffic[i..j];
        for k in (1..window.len()).rev() {
            window.swap(k, (rng() % (k as u64 + 1)) as usize);
        }
        d.advance(second * 1000 - 2_000, &rules, &mut shuffled);
        for inv in window.iter() {
            d.observe(inv.ts, &inv.keys, inv.service, &rules);
        }
        i = j;
    }
    d.advance(Millis::MAX, &rules, &mut shuffled);
    assert!(!sorted.is_empty());
    // Which of many equally light keys make the top lists depends on arrival
    // order; the heavy ones do not.
    assert_eq!(shuffled.len(), sorted.len());
    for (a, b) in shuffled.iter().zip(&sorted) {
        assert_eq!(a.top_services.first(), b.top_services.first());
        let untopped = |e: &StormEvent| StormEvent {
            top_keys: Vec::new(),
            top_services: Vec::new(),
            ..e.clone()
        };
        assert_eq!(untopped(a), untopped(b));
    }
}

/// Steady traffic with a storm of `user:` keys from 100 s to 130 s, in time
/// order.
fn user_storm() -> Vec<Inv> {
    let mut traffic = background(240, steady);
    traffic.extend(extra(100, 130, 3_000, |n| {
        (vec![CacheKey::from(format!("user:{n}"))], None)
    }));
    traffic.sort_by_key(|i| i.ts);
    traffic
}

#[test]
fn state_survives_a_restart_between_seconds() {
    let traffic = user_storm();
    let whole = detect(traffic.clone());
    let rules = rules();
    let mut out = Vec::new();
    let (before, after): (Vec<Inv>, Vec<Inv>) = traffic.into_iter().partition(|i| i.ts < 115_000);
    let mut d = StormDetector::default();
    for inv in &before {
        d.observe(inv.ts, &inv.keys, inv.service, &rules);
    }
    d.advance(115_000, &rules, &mut out);
    let saved = bincode::serde::encode_to_vec(d.state(), bincode::config::standard()).unwrap();
    let (state, _): (StormState, _) =
        bincode::serde::decode_from_slice(&saved, bincode::config::standard()).unwrap();
    let mut d = StormDetector::new(state);
    let mut second = 0;
    for inv in &after {
        if inv.ts / 1000 != second {
            second = inv.ts / 1000;
            d.advance(inv.ts - 2_000, &rules, &mut out);
        }
        d.observe(inv.ts, &inv.keys, inv.service, &rules);
    }
    d.advance(Millis::MAX, &rules, &mut out);
    assert_eq!(out, whole);
}

#[test]
fn storms_in_progress_are_listed_until_they_end() {
    let traffic = user_storm();
    let rules = rules();
    let mut d = StormDetector::default();
    let mut out = Vec::new();
    let (during, after): (Vec<Inv>, Vec<Inv>) = traffic.into_iter().partition(|i| i.ts < 120_000);
    for inv in &during {
        d.observe(inv.ts, &inv.keys, inv.service, &rules);
    }
    d.advance(118_000, &rules, &mut out);
    let storms = d.state().in_progress();
    let prefix = storms
        .iter()
        .find(|s| s.scope_type == ScopeType::Prefix)
        .unwrap_or_else(|| panic!("{storms:?}"));
    assert_eq!(prefix.scope, "user");
    assert!((100_000..105_000).contains(&prefix.start_ms), "{prefix:?}");
    assert!(
        prefix.count > 10_000 && prefix.peak >= 3_000.0,
        "{prefix:?}"
    );
    assert!(prefix.top_keys[0].0.starts_with("user:"), "{prefix:?}");
    assert!(
        storms.iter().any(|s| s.scope_type == ScopeType::Global),
        "{storms:?}"
    );
    assert!(storms.iter().all(|s| s.time_ms == 118_000), "{storms:?}");
    for inv in &after {
        d.observe(inv.ts, &inv.keys, inv.service, &rules);
    }
    d.advance(Millis::MAX, &rules, &mut out);
    assert_eq!(d.state().in_progress(), Vec::new());
}

#[test]
fn memory_is_bounded_with_ten_million_distinct_keys() {
    const BOUND: isize = 16 << 20;
    let rules = rules();
    let before = live_bytes();
    let mut d = StormDetector::default();
    let mut out = Vec::new();
    let mut peak = 0;
    let mut key = String::with_capacity(32);
    let mut at_one_million = 0;
    for n in 0..10_000_000u64 {
        let ts = (n / 100_000) as i64 * 1000 + (n % 1000) as i64;
        if n % 100_000 == 0 {
            d.advance(ts - 2_000, &rules, &mut out);
            peak = peak.max(live_bytes() - before);
        }
        if n == 1_000_000 {
            at_one_million = live_bytes() - before;
        }
        use std::fmt::Write;
        key.clear();
        let _ = write!(key, "user:{n}");
        d.observe(
            ts,
            &[CacheKey::from(key.as_str())],
            Some("users-api"),
            &rules,
        );
    }
    d.advance(Millis::MAX, &rules, &mut out);
    let held = live_bytes() - before;
    peak = peak.max(held);
    eprintln!(
        "storm detection at 10M distinct keys: peak {peak} bytes, {held} held at the end, {at_one_million} at 1M"
    );
    assert!(
        peak < BOUND,
        "storm detection held {peak} bytes at its peak (bound {BOUND})"
    );
    assert!(
        held <= at_one_million + (1 << 20),
        "memory does not grow with distinct keys: {at_one_million} at 1M, {held} at 10M"
    );
    assert!(d.memory_bytes() < BOUND as usize);
    drop(d);
}

#[test]
fn seconds_reuse_the_buffers_of_judged_ones() {
    let rules = rules();
    // Ten minutes of traffic with a silent minute in the middle.
    let traffic: Vec<Inv> = background(600, steady)
        .into_iter()
        .filter(|i| !(300_000..360_000).contains(&i.ts))
        .collect();
    let mut d = StormDetector::default();
    let mut out = Vec::new();
    let mut second = i64::MIN;
    let mut after_a_minute = None;
    for inv in &traffic {
        if inv.ts / 1000 != second {
            second = inv.ts / 1000;
            d.advance(inv.ts - 2_000, &rules, &mut out);
            if second == 60 {
                after_a_minute = Some(large_allocations());
            }
        }
        d.observe(inv.ts, &inv.keys, inv.service, &rules);
    }
    d.advance(Millis::MAX, &rules, &mut out);
    assert_eq!(
        large_allocations(),
        after_a_minute.expect("a minute of traffic"),
        "nine minutes more allocated sketch buffers"
    );
    assert!(d.open.is_empty());
    assert!(d.spare.len() <= SPARE_BUCKETS);
}
