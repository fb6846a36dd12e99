//! The engine on the in-memory store: verdicts do not depend on how the
//! partitions interleave, checkpoints store positions, and a restart from
//! the stored state finishes what the first run started.

use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::*;
use crate::config::Config;
use crate::dead_letter::DeadLetter;
use crate::events::Violation;
use crate::ingest::{Ingest, Payload, RawInput, Stream};
use crate::model::Provenance;
use crate::state::{Cf, MemStore, codec, scan_all};
use crate::time::{END_OF_TIME, SystemClock};

const CONFIG: &str = r#"
[detect]
deadline = "1s"
skew = "100ms"
allowed_lateness = "0ms"
late_window = "1s"

[[tables]]
table = "public.users"
pk = ["id"]
keys = ["user:{id}", "user:{id}:profile"]
version = "column:version"
contiguous = true
"#;

/// Outputs kept in memory, as lines.
#[derive(Clone, Default)]
struct Collected {
    lines: Arc<Mutex<Vec<String>>>,
    /// Holds the acknowledgement of every flush, when set.
    held: Option<Held>,
}

/// Something the pipeline waits for, held until the test lets it go: it
/// tells `started` when the wait starts, then waits for a message on
/// `release` (or for the test to hang up).
#[derive(Clone)]
struct Held {
    started: Sender<()>,
    release: crossbeam_channel::Receiver<()>,
}

impl Held {
    fn wait_for_release(&self) {
        let _ = self.started.send(());
        let _ = self
            .release
            .recv_timeout(std::time::Duration::from_secs(30));
    }
}

impl Acknowledgement for Held {
    fn wait(self: Box<Self>) -> Result<(), OutputError> {
        self.wait_for_release();
        Ok(())
    }
}

impl Outputs for Collected {
    fn violation(&mut self, v: &Violation) -> Result<(), OutputError> {
        self.lines
            .lock()
            .unwrap()
            .push(format!("{} {} {}", v.kind.as_str(), v.subject(), v.id));
        Ok(())
    }

    fn storm(&mut self, e: &StormEvent) -> Result<(), OutputError> {
        self.lines.lock().unwrap().push(format!(
            "storm.{} {} {}",
            e.phase.as_str(),
            e.subject(),
            e.id
        ));
        Ok(())
    }

    fn incident(&mut self, e: &IncidentEvent) -> Result<(), OutputError> {
        self.lines.lock().unwrap().push(format!(
            "incident.{} {} {}",
            e.phase.as_str(),
            e.subject(),
            e.id
        ));
        Ok(())
    }

    fn dead_letter(&mut self, _: &DeadLetter) -> Result<(), OutputError> {
        Ok(())
    }

    fn flush(&mut self, _: &[Position]) -> Result<Option<Box<dyn Acknowledgement>>, OutputError> {
        Ok(self
            .held
            .clone()
            .map(|held| Box::new(held) as Box<dyn Acknowledgement>))
    }
}

fn change(id: u64, version: u64, op: &str, ts: i64) -> String {
    format!(
        r#"{{"op":"{op}","after":{{"id":{id},"version":{version}}},"source":{{"ts_ms":{ts},"schema":"public","table":"users"}}}}"#
    )
}

/// A cache event at `ts` ms, written as fractional epoch seconds.
fn cache_event(operation: &str, key: &str, version: u64, ts: i64) -> String {
    let seconds = format!("{}.{:03}", ts / 1000, ts % 1000);
    format!(
        r#"{{"operation":"{operation}","cache_key":"{key}","version":{version},"timestamp":{seconds}}}"#
    )
}

fn invalidation(key: &str, version: u64, ts: i64) -> String {
    cache_event("invalidate", key, version, ts)
}

fn fill(key: &str, version: u64, ts: i64) -> String {
    cache_event("fill", key, version, ts)
}

/// Partition 0 carries changes, partition 1 cache events, both in time order.
fn inputs() -> (Vec<String>, Vec<String>) {
    let cdc = vec![
        change(1, 1, "c", 1_000),
        change(1, 2, "u", 2_000),
        change(2, 1, "c", 2_500),
        change(1, 4, "u", 6_000),
        change(2, 1, "u", 7_000),
        change(3, 1, "c", 30_000),
    ];
    let cache = vec![
        invalidation("user:1", 1, 1_100),
        invalidation("user:1:profile", 1, 1_200),
        invalidation("user:1", 2, 1_950),
        fill("user:1", 1, 2_500),
        invalidation("user:2:profile", 1, 2_600),
        invalidation("user:2", 1, 4_000),
        invalidation("user:1", 4, 6_050),
        invalidation("user:1:profile", 4, 6_050),
        invalidation("user:2", 1, 7_100),
        invalidation("user:2:profile", 1, 7_100),
        invalidation("user:3", 1, 30_000),
        invalidation("user:3:profile", 1, 30_000),
    ];
    (cdc, cache)
}

struct Harness {
    store: Arc<dyn Store>,
    config: Config,
}

impl Harness {
    fn new() -> Self {
        Self::on(Arc::new(MemStore::new()))
    }

    /// A harness whose engine keeps its state in `store`.
    fn on(store: Arc<dyn Store>) -> Self {
        Harness {
            store,
            config: Config::parse_with_env("test", CONFIG, Vec::new()).unwrap(),
        }
    }

    /// Runs the engine over `plan` (partition, line) in that order; ends the
    /// partitions when `end` is true (else hangs up, as a stopped consumer).
    fn run(&self, plan: &[(usize, String)], end: bool) -> (Vec<String>, RunReport) {
        let options = EngineOptions::from_config(&self.config, true);
        let (out, report, _) = self.run_with(options, plan, end, false);
        (out, report)
    }

    /// [`Harness::run`] with `options`; with `checkpoint_each`, commits a
    /// checkpoint after every record (waiting for each).
    fn run_with(
        &self,
        options: EngineOptions,
        plan: &[(usize, String)],
        end: bool,
        checkpoint_each: bool,
    ) -> (Vec<String>, RunReport, Arc<crate::telemetry::Stats>) {
        let (mut out, report, stats) = self.run_in_order(options, plan, end, checkpoint_each);
        out.sort();
        (out, report, stats)
    }

    /// [`Harness::run_with`], the outputs in the order the engine wrote them.
    fn run_in_order(
        &self,
        options: EngineOptions,
        plan: &[(usize, String)],
        end: bool,
        checkpoint_each: bool,
    ) -> (Vec<String>, RunReport, Arc<crate::telemetry::Stats>) {
        let stats = Arc::new(crate::telemetry::Stats::default());
        let ingest = Ingest::new(&self.config, Arc::clone(&stats)).expect("ingest");
        let engine = Engine {
            options,
            store: Arc::clone(&self.store),
            stats: Arc::clone(&stats),
            clock: Arc::new(SystemClock),
            partitions: 2,
            repartition: None,
        };
        let collected = Collected::default();
        let (tx, rx) = crossbeam_channel::unbounded();
        let report = std::thread::scope(|s| {
            let outputs = Box::new(collected.clone());
            let engine = s.spawn(move || engine.run(rx, outputs));
            for (i, (partition, line)) in plan.iter().enumerate() {
                send(&tx, &ingest, *partition, line, i as i64);
                if checkpoint_each {
                    let (done, committed) = crossbeam_channel::bounded(1);
                    tx.send(SourceMsg::Checkpoint { done }).unwrap();
                    committed
                        .recv_timeout(std::time::Duration::from_secs(10))
                        .expect("the checkpoint commits");
                }
            }
            if end {
                for partition in 0..2 {
                    tx.send(SourceMsg::End {
                        partitions: vec![partition],
                    })
                    .unwrap();
                }
            }
            drop(tx);
            engine.join().unwrap().unwrap()
        });
        let out = collected.lines.lock().unwrap().clone();
        (out, report, stats)
    }
}

fn send(tx: &Sender<SourceMsg>, ingest: &Ingest, partition: usize, line: &str, offset: i64) {
    let stream = if partition == 0 {
        Stream::Cdc
    } else {
        Stream::Cache
    };
    let provenance = Provenance {
        topic: crate::model::Name::new(&format!("p{partition}")),
        partition: 0,
        offset,
        from_file: false,
    };
    let mut records = Vec::new();
    let input = RawInput {
        stream,
        key: None,
        value: Some(Payload::Text(line)),
        timestamp_ms: None,
    };
    ingest.ingest(input, &provenance, &mut records).unwrap();
    let position = Some(Position {
        source: provenance.topic.clone(),
        partition: 0,
        next_offset: offset + 1,
        event_time: None,
    });
    tx.send(SourceMsg::Batch(vec![PartitionBatch {
        partition,
        records,
        dead: Vec::new(),
        position,
        keyed: None,
    }]))
    .unwrap();
}

/// Interleavings of the two partitions that keep each in its own order.
fn interleavings(cdc: &[String], cache: &[String]) -> Vec<Vec<(usize, String)>> {
    let tagged = |p: usize, v: &[String]| v.iter().map(|l| (p, l.clone())).collect::<Vec<_>>();
    let cdc_first = [tagged(0, cdc), tagged(1, cache)].concat();
    let cache_first = [tagged(1, cache), tagged(0, cdc)].concat();
    let mut alternating = Vec::new();
    let (mut a, mut b) = (tagged(0, cdc).into_iter(), tagged(1, cache).into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => alternating.extend(x.into_iter().chain(y)),
        }
    }
    vec![cdc_first, cache_first, alternating]
}

#[test]
fn verdicts_do_not_depend_on_how_partitions_interleave() {
    let (cdc, cache) = inputs();
    let results: Vec<Vec<String>> = interleavings(&cdc, &cache)
        .iter()
        .map(|plan| Harness::new().run(plan, true).0)
        .collect();
    let kinds: Vec<&str> = results[0]
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    // user:1 v2: its key invalidated (stamped 50 ms early, within the skew)
    // but not its profile key, which only the v4 invalidation covers, long
    // after the late window; the fill of v1 at 2500 is stale (v2 committed
    // at 2000); user:2, created at 2500, has its key invalidated late at 4000
    // (missing, then late), its profile in time; user:1 jumps from v2 to v4
    // (a gap); user:2 updated to version 1 again with the same row is a
    // duplicate for the entity checks, never a conflict.
    assert_eq!(
        kinds,
        vec![
            "late_invalidation",
            "missing_invalidation",
            "missing_invalidation",
            "stale_fill",
            "version_gap"
        ],
        "{results:#?}"
    );
    assert!(results.iter().all(|r| *r == results[0]), "{results:#?}");
}

#[test]
fn a_watermark_passing_many_deadlines_reports_the_missing_invalidations_first() {
    // user:1's change is invalidated in time and then filled with an older
    // version (a stale fill, judged at 1,500); user:2's change (due at
    // 2,200) is never invalidated, user:4's (due at 2,300) only late. The
    // cache events come first, so the watermark follows the changes, and
    // user:3's change at 10,000 then passes them all at once: the missing
    // (and late) invalidations come first, though due later. (Live inputs:
    // over files, nobody waits for a verdict, and keys fire in due order.)
    let plan = [
        (1, invalidation("user:1", 1, 1_100)),
        (1, invalidation("user:1:profile", 1, 1_100)),
        (1, fill("user:1", 0, 1_500)),
        (1, invalidation("user:4", 1, 2_500)),
        (1, invalidation("user:4:profile", 1, 2_500)),
        (1, invalidation("user:3", 1, 10_000)),
        (1, invalidation("user:3:profile", 1, 10_000)),
        (0, change(1, 1, "c", 1_000)),
        (0, change(2, 1, "c", 1_200)),
        (0, change(4, 1, "c", 1_300)),
        (0, change(3, 1, "c", 10_000)),
    ];
    let harness = Harness::new();
    let options = EngineOptions {
        workers: 1,
        ..EngineOptions::from_config(&harness.config, false)
    };
    let (out, _, _) = harness.run_in_order(options, &plan, true, false);
    let kinds: Vec<&str> = out.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(kinds.last(), Some(&"stale_fill"), "{out:#?}");
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "late_invalidation",
            "late_invalidation",
            "missing_invalidation",
            "missing_invalidation",
            "missing_invalidation",
            "missing_invalidation",
            "stale_fill"
        ],
        "{out:#?}"
    );
}

/// A truncate of `public.users` at `ts` ms.
fn truncate(ts: i64) -> String {
    format!(r#"{{"op":"t","source":{{"ts_ms":{ts},"schema":"public","table":"users"}}}}"#)
}

#[test]
fn a_truncate_obliges_a_glob_invalidation_of_each_key_template() {
    let cdc = vec![
        change(1, 1, "c", 1_000),
        truncate(2_000),
        change(1, 2, "u", 5_000),
        truncate(10_000),
        truncate(20_000),
    ];
    let cache = vec![
        invalidation("user:1", 1, 1_100),
        invalidation("user:1:profile", 1, 1_100),
        // Covers both of the first truncate's patterns in time.
        invalidation("user:*", 0, 2_050),
        invalidation("user:1", 2, 5_050),
        invalidation("user:1:profile", 2, 5_050),
        // Neither an exact key nor a narrower glob covers `user:*`; the
        // profile pattern is covered by its own text.
        invalidation("user:1", 3, 10_020),
        invalidation("user:1*", 0, 10_050),
        invalidation("user:*:profile", 0, 10_060),
        // After the 1 s deadline, within the late window.
        invalidation("*", 0, 21_500),
    ];
    let results: Vec<(Vec<String>, u64)> = interleavings(&cdc, &cache)
        .iter()
        .map(|plan| {
            let h = Harness::new();
            let options = EngineOptions::from_config(&h.config, true);
            let (out, _, stats) = h.run_with(options, plan, true, false);
            let verdicts = out
                .iter()
                .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
                .collect();
            (verdicts, stats.snapshot().truncates)
        })
        .collect();
    // user:1's own changes, invalidated in time, give nothing; the first
    // truncate is covered, the second only for its profile pattern, the
    // third late for both.
    assert_eq!(
        results[0],
        (
            vec![
                "late_invalidation user:*".to_string(),
                "late_invalidation user:*:profile".to_string(),
                "missing_invalidation user:*".to_string(),
                "missing_invalidation user:*".to_string(),
                "missing_invalidation user:*:profile".to_string(),
            ],
            3
        ),
        "{results:#?}"
    );
    assert!(results.iter().all(|r| *r == results[0]), "{results:#?}");
}

#[test]
fn checkpoints_store_positions_with_the_state() {
    let (cdc, cache) = inputs();
    let h = Harness::new();
    let plan = &interleavings(&cdc, &cache)[0];
    let (_, report) = h.run(plan, true);
    assert_eq!(report.watermark, END_OF_TIME);
    assert!(report.checkpoints >= 1);
    let offset = |topic: &str| {
        h.store
            .get(Cf::Offsets, &codec::offset_key(topic, 0))
            .unwrap()
            .map(|b| codec::parse_offset_value(&b).unwrap())
    };
    assert_eq!(offset("p0"), Some(cdc.len() as i64));
    assert_eq!(offset("p1"), Some(plan.len() as i64));
}

#[test]
fn a_restart_from_stored_state_finishes_what_the_first_run_started() {
    let (cdc, cache) = inputs();
    let plan = &interleavings(&cdc, &cache)[2];
    let (whole, _) = Harness::new().run(plan, true);

    let h = Harness::new();
    let split = plan.len() / 2;
    let (first, report) = h.run(&plan[..split], false);
    assert!(
        report.watermark < END_OF_TIME,
        "a hang-up is not the end of the inputs"
    );
    let (second, _) = h.run(&plan[split..], true);
    let mut both = [first, second].concat();
    both.sort();
    assert_eq!(both, whole, "state and timers carried across the restart");
}

#[test]
fn a_restart_anywhere_keeps_the_verdicts_of_timers_and_globs_over_stored_keys() {
    // The keys armed before a restart are read back as their timers come
    // due, and filed among the open keys before a glob invalidation looks
    // there: wherever the run stops, the verdicts are those of one run.
    let cdc = vec![
        change(1, 1, "c", 1_000),
        change(2, 1, "c", 1_100),
        change(3, 1, "c", 1_200),
        change(1, 2, "u", 3_000),
        change(4, 1, "c", 9_000),
    ];
    let cache = vec![
        invalidation("user:1*", 0, 1_500),
        invalidation("user:2", 1, 1_600),
        invalidation("user:*", 0, 3_100),
        invalidation("user:4", 1, 9_050),
    ];
    for plan in interleavings(&cdc, &cache) {
        let (whole, _) = Harness::new().run(&plan, true);
        assert!(
            whole.iter().any(|v| v.starts_with("missing_invalidation")),
            "{whole:#?}"
        );
        for split in 1..plan.len() {
            let h = Harness::new();
            let (first, _) = h.run(&plan[..split], false);
            let (second, _) = h.run(&plan[split..], true);
            let mut both = [first, second].concat();
            both.sort();
            assert_eq!(both, whole, "stopped after {split}: {plan:#?}");
        }
    }
}

#[test]
fn state_that_leaves_memory_comes_back_with_the_same_verdicts() {
    let (cdc, cache) = inputs();
    let config = Harness::new().config;
    let kept = EngineOptions::from_config(&config, true);
    for plan in interleavings(&cdc, &cache) {
        let (whole, _) = Harness::new().run(&plan, true);
        for durable in [true, false] {
            let h = Harness::new();
            let options = EngineOptions {
                durable,
                slot_budget: 0,
                ..kept.clone()
            };
            let (out, _, stats) = h.run_with(options, &plan, true, true);
            assert_eq!(out, whole, "durable {durable}: {plan:#?}");
            assert!(
                stats.snapshot().state_evictions > 0,
                "durable {durable}: keys and entities left memory"
            );
            let stored_keys = scan_all(&*h.store, Cf::Keys, &[]).len();
            assert!(
                stored_keys > 0,
                "durable {durable}: what left memory is in the store"
            );
        }
    }
}

/// Rows changed within a deadline of each other and never invalidated:
/// every key stays armed while the records come, and every timer fires when
/// the inputs end, each reading its key back if it left memory.
fn armed_rows(rows: u64) -> Vec<(usize, String)> {
    (0..rows)
        .map(|id| (0, change(id, 1, "c", 1_000 + id as i64)))
        .collect()
}

/// Runs `plan` (of [`armed_rows`]) with `options` and all the memory it
/// takes, then with a tenth of that: the same verdicts, a peak within the
/// budget and a `slack`th of the whole. Returns how many slots left memory.
fn stays_within_a_tenth(
    plan: &[(usize, String)],
    options: EngineOptions,
    checkpoint_each: bool,
    slack: usize,
) -> u64 {
    let run = |slot_budget| {
        let options = EngineOptions {
            slot_budget,
            ..options.clone()
        };
        let (out, _, stats) = Harness::new().run_with(options, plan, true, checkpoint_each);
        let stats = stats.snapshot();
        (out, stats.state_peak_bytes as usize, stats.state_evictions)
    };
    let (whole, everything, _) = run(usize::MAX);
    let missed = whole
        .iter()
        .filter(|v| v.starts_with("missing_invalidation"))
        .count();
    assert_eq!(missed, 2 * plan.len(), "both keys of every row");
    let budget = everything / 10;
    let (out, peak, evictions) = run(budget);
    let missing: Vec<&String> = whole.iter().filter(|v| !out.contains(v)).collect();
    let extra: Vec<&String> = out.iter().filter(|v| !whole.contains(v)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert!(
        peak <= budget + everything / slack,
        "peak {peak} B over a budget of {budget} B ({everything} B for everything)"
    );
    evictions
}

#[test]
fn a_watermark_that_fires_many_timers_keeps_unkept_state_within_the_budget() {
    // A checkpoint after every record lets keys leave memory.
    let options = EngineOptions {
        durable: false,
        ..EngineOptions::from_config(&Harness::new().config, true)
    };
    stays_within_a_tenth(&armed_rows(120), options, true, 40);
}

/// Options under which no checkpoint comes on its own (the interval is an
/// hour), with small batches.
fn no_checkpoint_on_its_own(durable: bool) -> EngineOptions {
    EngineOptions {
        durable,
        checkpoint_every: std::time::Duration::from_secs(3600),
        queue_batches: 1,
        batch_size: 4,
        ..EngineOptions::from_config(&Harness::new().config, true)
    }
}

#[test]
fn unkept_state_stays_within_its_budget_between_checkpoints() {
    // Unkept state over its budget spills as the records come.
    let evictions =
        stays_within_a_tenth(&armed_rows(200), no_checkpoint_on_its_own(false), false, 20);
    assert!(evictions > 0, "keys and entities left memory");
}

#[test]
fn unkept_state_leaves_memory_in_parts() {
    // A spill written a slot at a time (each part dropped from memory
    // before the next is chosen) ends with the same verdicts, within the
    // budget.
    let options = EngineOptions {
        spill_step: 1,
        ..no_checkpoint_on_its_own(false)
    };
    let evictions = stays_within_a_tenth(&armed_rows(200), options, false, 20);
    assert!(evictions > 0, "keys and entities left memory");
}

#[test]
fn kept_state_stays_within_its_budget_between_checkpoints_and_while_timers_fire() {
    // Only a worker over its budget asks for checkpoints.
    let evictions =
        stays_within_a_tenth(&armed_rows(200), no_checkpoint_on_its_own(true), false, 20);
    assert!(evictions > 0, "keys and entities left memory");
}

/// Runs `plan` to the end of its inputs with `options` and `slot_budget`
/// bytes for state: its verdicts and its stats.
fn run_within(
    plan: &[(usize, String)],
    options: &EngineOptions,
    slot_budget: usize,
) -> (Vec<String>, crate::telemetry::StatsSnapshot) {
    let options = EngineOptions {
        slot_budget,
        ..options.clone()
    };
    let (out, _, stats) = Harness::new().run_with(options, plan, true, false);
    (out, stats.snapshot())
}

/// [`run_within`] with all the memory the run takes.
fn run_unbounded(
    plan: &[(usize, String)],
    options: &EngineOptions,
) -> (Vec<String>, crate::telemetry::StatsSnapshot) {
    run_within(plan, options, usize::MAX)
}

#[test]
fn timers_and_open_keys_take_their_share_of_the_budget() {
    // Every key stays armed and open while the records come. A budget a
    // fifth over what the keys and entities take at their peak keeps them
    // all in memory if it leaves out their timers and the index of open
    // keys (about a quarter of what the keys and entities take here).
    let plan = armed_rows(1_000);
    let options = no_checkpoint_on_its_own(false);
    let (whole, unbounded) = run_unbounded(&plan, &options);
    assert_eq!(unbounded.state_evictions, 0, "nothing left memory");
    let (out, stats) = run_within(&plan, &options, unbounded.state_peak_bytes as usize / 5 * 6);
    assert_eq!(out, whole, "the same verdicts");
    assert!(
        stats.state_evictions > 0,
        "keys and entities left memory to their timers and open keys"
    );
}

#[test]
fn retained_globs_take_their_share_of_the_budget() {
    // Three times what the rows' keys and entities take at their peak
    // holds them with their timers and open keys; with many globs retained
    // beside them (of other keys), keys and entities leave memory.
    let rows = armed_rows(200);
    let options = no_checkpoint_on_its_own(false);
    let (whole, alone) = run_unbounded(&rows, &options);
    let budget = alone.state_peak_bytes as usize * 3;
    let (out, stats) = run_within(&rows, &options, budget);
    assert_eq!(
        (out, stats.state_evictions),
        (whole, 0),
        "the rows alone fit"
    );
    let globs = (0..10_000).map(|i| (1, invalidation(&format!("other:{i}:*"), 1, 1_000 + i / 100)));
    let plan: Vec<(usize, String)> = rows.into_iter().chain(globs).collect();
    let (whole, unbounded) = run_unbounded(&plan, &options);
    assert_eq!(unbounded.state_evictions, 0, "nothing left memory");
    let (out, stats) = run_within(&plan, &options, budget);
    assert_eq!(out, whole, "the same verdicts");
    assert!(
        stats.state_evictions > 0,
        "keys and entities left memory to the globs"
    );
}

#[test]
fn keys_read_back_as_timers_fire_do_not_take_what_the_timers_free() {
    use super::shard::{OPEN_KEY_BYTES, TIMER_BYTES};

    // Every row's key stays armed and open while the records come (the
    // index then takes the share of 1,000 timers and open keys), and
    // fires when the inputs end, read back if it left memory. The index
    // frees its entries as they fire, but not memory the keys can take
    // (see `Shard::slot_budget`): the keys stay within what the budget
    // left them at the index's most, give or take a fortieth of it.
    const ROWS: usize = 1_000;
    let plan = armed_rows(ROWS as u64);
    let options = no_checkpoint_on_its_own(false);
    let (whole, unbounded) = run_unbounded(&plan, &options);
    let budget = unbounded.state_peak_bytes as usize;
    let (out, stats) = run_within(&plan, &options, budget);
    assert_eq!(out, whole, "the same verdicts");
    assert!(stats.state_evictions > 0, "keys left memory to the index");
    let share = budget - ROWS * (TIMER_BYTES + OPEN_KEY_BYTES);
    assert!(
        stats.state_peak_bytes as usize <= share + budget / 40,
        "the keys' peak {} within their share {share} at the index's most",
        stats.state_peak_bytes
    );
}

#[test]
fn a_checkpoint_of_kept_state_writes_about_a_quarter_of_the_budget_at_most() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    // Every timer fires when the inputs end, each key read back and changed
    // by its firing: without a bound, a checkpoint would carry every key
    // the budget holds.
    const ROWS: usize = 200;
    /// Keys and entities the budget holds.
    const HELD: usize = 60;
    let plan = armed_rows(ROWS as u64);
    let options = no_checkpoint_on_its_own(true);
    let (whole, unbounded) = run_unbounded(&plan, &options);
    // Each row: its entity and its two keys.
    let slot_bytes = unbounded.state_peak_bytes as usize / (3 * ROWS);

    let largest = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&largest);
    let store = Arc::new(WatchedWrites {
        inner: MemStore::new(),
        before: Box::new(move |batch| {
            let slots = batch
                .writes
                .iter()
                .filter(|w| matches!(w.cf, Cf::Keys | Cf::Entities))
                .count();
            seen.fetch_max(slots, Ordering::Relaxed);
        }),
    });
    let (out, _, stats) = Harness::on(store).run_with(
        EngineOptions {
            slot_budget: HELD * slot_bytes,
            ..options
        },
        &plan,
        true,
        false,
    );
    assert_eq!(out, whole, "the same verdicts");
    assert!(stats.snapshot().state_evictions > 0, "keys left memory");
    let largest = largest.load(Ordering::Relaxed);
    // A quarter of what the budget holds, and the records of a batch or
    // two applied before the checkpoint begins.
    assert!(
        largest <= HELD / 4 + 15,
        "a checkpoint wrote {largest} keys and entities, of {HELD} the budget holds"
    );
}

/// The in-memory store, with each write shown to `before` before it is
/// written (which may hold it until the test lets it go).
struct WatchedWrites {
    inner: MemStore,
    before: Box<dyn Fn(&StateBatch) + Send + Sync>,
}

impl Store for WatchedWrites {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.get(cf, key)
    }

    fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        (self.before)(&batch);
        self.inner.write(batch)
    }

    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.inner.scan(cf, prefix, f)
    }

    fn scan_range(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.inner.scan_range(cf, from, to, f)
    }

    fn last_in(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.last_in(cf, from, to)
    }

    fn delete_scope(&self, scope: i32) -> Result<(), StateError> {
        self.inner.delete_scope(scope)
    }

    fn retention(&self) -> &crate::state::RetentionHorizon {
        self.inner.retention()
    }

    fn sweep(&self) -> Result<(), StateError> {
        self.inner.sweep()
    }

    fn approximate_len(&self, cf: Cf) -> u64 {
        self.inner.approximate_len(cf)
    }
}

/// A hold on checkpoints, and how the test lets it go.
fn hold() -> (Held, crossbeam_channel::Receiver<()>, Sender<()>) {
    let (started, started_rx) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded();
    let held = Held {
        started,
        release: release_rx,
    };
    (held, started_rx, release)
}

/// While a checkpoint is held (by `store`'s write or by `outputs`'
/// acknowledgement, told by `started`), a version regression still reaches
/// the outputs at once, and the checkpoint commits, position included,
/// only once `release` lets it go.
fn outputs_flow_while_a_checkpoint_is_held(
    store: Arc<dyn Store>,
    collected: Collected,
    started: crossbeam_channel::Receiver<()>,
    release: Sender<()>,
) {
    let wait = std::time::Duration::from_secs(10);
    let config = Harness::new().config;
    let stats = Arc::new(crate::telemetry::Stats::default());
    let ingest = Ingest::new(&config, Arc::clone(&stats)).expect("ingest");
    let engine = Engine {
        options: EngineOptions::from_config(&config, true),
        store: Arc::clone(&store),
        stats,
        clock: Arc::new(SystemClock),
        partitions: 2,
        repartition: None,
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::scope(|s| {
        let outputs = Box::new(collected.clone());
        let engine = s.spawn(move || engine.run(rx, outputs));
        send(&tx, &ingest, 0, &change(1, 5, "c", 1_000), 0);
        let (done, committed) = crossbeam_channel::bounded(1);
        tx.send(SourceMsg::Checkpoint { done }).unwrap();
        started.recv_timeout(wait).expect("the checkpoint is held");

        // A version regression is reported as soon as it is seen.
        send(&tx, &ingest, 0, &change(1, 3, "u", 2_000), 1);
        let until = std::time::Instant::now() + wait;
        let reported = || {
            let out = collected.lines.lock().unwrap();
            out.iter().any(|v| v.starts_with("version_regression"))
        };
        while !reported() && std::time::Instant::now() < until {
            std::thread::park_timeout(std::time::Duration::from_millis(1));
        }
        assert!(
            reported(),
            "the regression reaches the outputs while the checkpoint is held"
        );
        assert!(
            committed.try_recv().is_err(),
            "the checkpoint is not committed while it is held"
        );

        drop(release);
        committed
            .recv_timeout(wait)
            .expect("the checkpoint commits once let go");
        drop(tx);
        engine.join().unwrap().unwrap();
    });
    let positions = scan_all(&*store, Cf::Offsets, &[]).len();
    assert_eq!(positions, 1, "the checkpoint's position is in the store");
}

#[test]
fn outputs_do_not_wait_for_the_store_to_write_a_checkpoint() {
    let (held, started, release) = hold();
    let store = Arc::new(WatchedWrites {
        inner: MemStore::new(),
        before: Box::new(move |_| held.wait_for_release()),
    });
    outputs_flow_while_a_checkpoint_is_held(store, Collected::default(), started, release);
}

/// The broker acknowledging a checkpoint's outputs holds its commit, not
/// the outputs that come after.
#[test]
fn outputs_do_not_wait_for_a_checkpoint_to_be_acknowledged() {
    let (held, started, release) = hold();
    let collected = Collected {
        held: Some(held),
        ..Collected::default()
    };
    outputs_flow_while_a_checkpoint_is_held(Arc::new(MemStore::new()), collected, started, release);
}

/// The watermark a live engine reaches once both partitions, read to their
/// end at event time 1 s, have been quiet for longer than the idle timeout.
fn watermark_after_quiet_partitions(idle_partitions: bool) -> i64 {
    let config = Config::parse_with_env("test", CONFIG, Vec::new()).unwrap();
    let stats = Arc::new(crate::telemetry::Stats::default());
    let ingest = Ingest::new(&config, Arc::clone(&stats)).expect("ingest");
    let clock = crate::time::ManualClock::new(100_000);
    let mut options = EngineOptions::from_config(&config, false);
    options.idle_timeout_ms = if idle_partitions { 1_000 } else { Millis::MAX };
    let engine = Engine {
        options,
        store: Arc::new(MemStore::new()) as Arc<dyn Store>,
        stats: Arc::clone(&stats),
        clock: Arc::new(clock.clone()),
        partitions: 2,
        repartition: None,
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    // The router takes its messages in order: once a checkpoint sent after
    // them commits, it has handled them.
    let handled = |tx: &Sender<SourceMsg>| {
        let (done, committed) = crossbeam_channel::bounded(1);
        tx.send(SourceMsg::Checkpoint { done }).unwrap();
        committed
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the checkpoint commits");
    };
    std::thread::scope(|s| {
        let engine = s.spawn(move || engine.run(rx, Box::new(Collected::default())));
        send(&tx, &ingest, 0, &change(1, 1, "c", 1_000), 0);
        send(&tx, &ingest, 1, &invalidation("user:1", 1, 1_000), 0);
        for partition in 0..2 {
            tx.send(SourceMsg::CaughtUp {
                partition,
                caught_up: true,
            })
            .unwrap();
        }
        handled(&tx);
        clock.advance(60_000);
        handled(&tx);
        drop(tx);
        engine.join().unwrap().unwrap();
    });
    stats.watermark()
}

/// Stage two of two takes its time from stage one's marks only: quiet
/// repartition partitions do not let its watermark follow its own clock
/// (which ran ahead of stage one's watermark, and fired deadlines early),
/// where live inputs of one process do.
#[test]
fn partitions_that_never_idle_keep_the_watermark_on_their_event_time() {
    assert_eq!(watermark_after_quiet_partitions(true), 160_000);
    assert_eq!(watermark_after_quiet_partitions(false), 1_000);
}

/// A Debezium change of `users` row `id` in transaction `tx`.
fn tx_change(id: u64, ts: i64, tx: &str, order: u64) -> String {
    format!(
        r#"{{"op":"c","after":{{"id":{id},"version":1}},"source":{{"ts_ms":{ts},"schema":"public","table":"users"}},"transaction":{{"id":"{tx}","total_order":{order},"data_collection_order":{order}}}}}"#
    )
}

fn tx_begin(tx: &str, ts: i64) -> String {
    format!(
        r#"{{"status":"BEGIN","id":"{tx}","ts_ms":{ts},"event_count":null,"data_collections":null}}"#
    )
}

fn tx_end(tx: &str, ts: i64, events: u64) -> String {
    format!(
        r#"{{"status":"END","id":"{tx}","ts_ms":{ts},"event_count":{events},"data_collections":[{{"data_collection":"public.users","event_count":{events}}}]}}"#
    )
}

#[test]
fn a_restart_remembers_the_decided_transactions_and_finishes_the_open_ones() {
    let config = CONFIG.replace(
        "late_window = \"1s\"",
        "late_window = \"1s\"\ntransactions = true\ntransaction_timeout = \"10s\"",
    );
    let invalidated = |id: u64, ts: i64| {
        [
            (1, invalidation(&format!("user:{id}"), 1, ts)),
            (1, invalidation(&format!("user:{id}:profile"), 1, ts)),
        ]
    };
    let mut plan = vec![
        // A announces two events and one comes: incomplete.
        (0, tx_begin("A", 1_000)),
        (0, tx_change(1, 1_000, "A", 1)),
        (0, tx_end("A", 1_010, 2)),
    ];
    plan.extend(invalidated(1, 1_050));
    // B is complete; C never ends: unterminated.
    plan.extend([
        (0, tx_begin("B", 1_500)),
        (0, tx_change(2, 1_500, "B", 1)),
        (0, tx_end("B", 1_510, 1)),
    ]);
    plan.extend(invalidated(2, 1_550));
    plan.extend([(0, tx_begin("C", 2_000)), (0, tx_change(3, 2_000, "C", 1))]);
    plan.extend(invalidated(3, 2_050));
    // The watermark passes A's and B's ENDs: both decided.
    plan.push((0, change(4, 1, "c", 5_000)));
    plan.extend(invalidated(4, 5_050));
    let split = plan.len();
    // A redelivered change of A, after its verdict: late, not a new
    // transaction (that would never end).
    plan.push((0, tx_change(1, 1_000, "A", 1)));
    plan.push((0, change(5, 1, "c", 30_000)));
    plan.extend(invalidated(5, 30_050));

    let harness = || Harness {
        store: Arc::new(MemStore::new()),
        config: Config::parse_with_env("test", &config, Vec::new()).unwrap(),
    };
    let whole = harness();
    let options = EngineOptions::from_config(&whole.config, true);
    let (all, _, _) = whole.run_with(options.clone(), &plan, true, true);
    let kinds = |out: &[String], kind: &str| out.iter().filter(|v| v.starts_with(kind)).count();
    assert_eq!(kinds(&all, "incomplete_transaction"), 1, "{all:?}");
    assert_eq!(kinds(&all, "unterminated_transaction"), 1, "{all:?}");

    let h = harness();
    let (first, _, _) = h.run_with(options.clone(), &plan[..split], false, true);
    let (second, _, _) = h.run_with(options, &plan[split..], true, true);
    let mut both = [first, second].concat();
    both.sort();
    assert_eq!(both, all, "the same verdicts across the restart");
}
