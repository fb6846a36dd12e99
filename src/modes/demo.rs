//! `vigil demo`: vigil's main job on its embedded default. An in-process
//! Kafka-protocol broker (librdkafka's mock cluster), a live synthetic
//! workload with injected faults streamed into it, the real `vigil run`
//! pipeline consuming it, a line of figures a second, and at the end the
//! injected faults against the violations detected, per kind, and the
//! injected invalidation storms against the storms reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use super::assemble::{open_store, runtime, serve};
use super::shutdown::Control;
use super::{ExitStatus, produce_generated};
use crate::cli::DemoArgs;
use crate::config::{Config, KafkaValue};
use crate::detect::storm::{Phase, ScopeType};
use crate::events::ViolationKind;
use crate::telemetry::Stats;
use crate::time::{Clock, SystemClock};
use crate::workload::encode::CdcFormat;
use crate::workload::storms::{ExpectedStorm, StormSchedule, Traffic};
use crate::workload::{self, FaultRates, Generator, Spec, TxFaults};

/// Fault rates of the demo: high enough to see every kind in 30 seconds.
const DEMO_FAULTS: FaultRates = FaultRates {
    missing: 0.02,
    late: 0.02,
    stale_fill: 0.02,
    fill_after_delete: 0.3,
    regression: 0.01,
    gap: 0.01,
    conflict: 0.01,
    duplicate: 0.02,
};

/// How long the demo waits, after the workload ends, for the last verdicts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

const VIOLATIONS_TOPIC: &str = "vigil.violations";
const DLQ_TOPIC: &str = "vigil.dlq";
const STORMS_TOPIC: &str = "vigil.storms";

/// The storms of a demo lasting `duration_ms`: a hot key, a runaway service
/// and bulk invalidations, 5 s each from 8 s on, as many as fit.
fn demo_storms(duration_ms: i64) -> Option<StormSchedule> {
    let mut schedule = StormSchedule {
        warmup_ms: 8_000,
        length_ms: 5_000,
        every_ms: 7_000,
        kinds: vec![ScopeType::HotKey, ScopeType::Service, ScopeType::Bulk],
        settle_ms: 0,
    };
    while !schedule.kinds.is_empty() && schedule.span_ms() > duration_ms {
        schedule.kinds.pop();
    }
    (!schedule.kinds.is_empty()).then_some(schedule)
}

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitStatus> {
    let clock = SystemClock;
    let cluster = MockCluster::new(1).context("starting the embedded broker")?;
    let bootstrap = cluster.bootstrap_servers();
    let start_ms = clock.now_ms() + 2_000;
    let events = args.rate.saturating_mul(args.duration.0.as_secs().max(1));
    let spec = Spec {
        events,
        keys: args.keys,
        tables: 3,
        rate: args.rate,
        format: CdcFormat::Debezium,
        seed: args.seed,
        faults: DEMO_FAULTS,
        start_ms,
        partitions: workload::PARTITIONS,
        traffic: Traffic::Steady,
        storms: demo_storms(args.duration.0.as_millis() as i64),
        transactions: Some(TxFaults::GEN),
    };
    let mut generator = Generator::new(spec.clone());
    if let Err(why) = generator.check_storms() {
        println!("vigil demo: no storms injected ({why})");
        generator = Generator::new(Spec {
            storms: None,
            ..spec
        });
    }
    let topics = generator.topics();
    for topic in
        topics
            .iter()
            .map(String::as_str)
            .chain([VIOLATIONS_TOPIC, DLQ_TOPIC, STORMS_TOPIC])
    {
        cluster
            .create_topic(topic, workload::PARTITIONS, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let config = demo_config(&generator, &bootstrap)?;
    println!("vigil demo: embedded Kafka-protocol broker at {bootstrap}");
    println!("  watch the violations: kcat -b {bootstrap} -C -t {VIOLATIONS_TOPIC}");
    println!("  watch the storms:     kcat -b {bootstrap} -C -t {STORMS_TOPIC}");
    let storms: Vec<String> = generator
        .expected_storms()
        .iter()
        .map(|s| s.scope_type.as_str().to_string())
        .collect();
    println!(
        "  streaming {events} records at {} records/s for {}s into {} topics, faults injected, storms: {}",
        args.rate,
        args.duration.0.as_secs(),
        topics.len(),
        if storms.is_empty() {
            "none".to_string()
        } else {
            storms.join(", ")
        }
    );

    let state_dir = std::env::temp_dir().join(format!("vigil-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut config = config;
    config.state.path = state_dir.clone();
    let store = open_store(&state_dir, config.state.cache_size)?;
    let stats = Arc::new(Stats::default());
    let runtime = runtime()?;
    let control = Control::default();
    control.on_signals(runtime.handle());
    let produced = AtomicU64::new(0);
    let producing = AtomicBool::new(true);
    let last_ts = std::sync::atomic::AtomicI64::new(start_ms);

    let generator_storms = generator.expected_storms();
    let outcome = std::thread::scope(|s| -> anyhow::Result<()> {
        let pipeline = s.spawn(|| serve(&config, store, Arc::clone(&stats), &control));
        let feeder = s.spawn(|| {
            let result = feed(
                &bootstrap,
                &mut generator,
                &control.stop,
                &produced,
                &last_ts,
            );
            producing.store(false, Ordering::SeqCst);
            result
        });
        watch(
            &stats,
            &generator_storms,
            &produced,
            &producing,
            &last_ts,
            &control.stop,
        );
        control.stop.store(true, Ordering::SeqCst);
        feeder.join().expect("the feeder does not panic")?;
        pipeline.join().expect("the pipeline does not panic")?;
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&state_dir);
    outcome?;
    print_table(&generator, &stats);
    Ok(ExitStatus::Ok)
}

/// The generated workload's configuration, pointed at the embedded broker.
fn demo_config(generator: &Generator, bootstrap: &str) -> anyhow::Result<Config> {
    let mut config = Config::parse_with_env("vigil demo", &generator.config_toml(), Vec::new())?;
    config.kafka.insert(
        "bootstrap.servers".into(),
        KafkaValue(bootstrap.to_string()),
    );
    config.inputs.group_id = "vigil-demo".into();
    config.outputs.violations_topic = VIOLATIONS_TOPIC.into();
    config.outputs.dlq_topic = DLQ_TOPIC.into();
    config.outputs.storms_topic = STORMS_TOPIC.into();
    // Short enough for the runaway service to storm within the demo.
    config.storms.warmup = crate::config::Dur::from_secs(5);
    config.detect.idle_timeout = crate::config::Dur::from_secs(2);
    config.metrics.listen = String::new();
    config.validate()?;
    config.validate_for_run()?;
    Ok(config)
}

/// Produces the workload at its event-time pace until done or stopped.
fn feed(
    bootstrap: &str,
    generator: &mut Generator,
    stop: &AtomicBool,
    produced: &AtomicU64,
    last_ts: &std::sync::atomic::AtomicI64,
) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .context("creating the workload producer")?;
    let clock = SystemClock;
    for record in generator.by_ref() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let wait = record.ts_ms - clock.now_ms();
        if wait > 0 {
            std::thread::sleep(Duration::from_millis(wait as u64));
        }
        produce_generated(&producer, &record, record.ts_ms, ())?;
        produced.fetch_add(1, Ordering::Relaxed);
        last_ts.fetch_max(record.ts_ms, Ordering::Relaxed);
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the workload")?;
    Ok(())
}

/// Prints a line a second until the workload is in and judged (the
/// watermark past its last deadline and late window, every storm over), or
/// `stop`.
fn watch(
    stats: &Stats,
    storms: &[ExpectedStorm],
    produced: &AtomicU64,
    producing: &AtomicBool,
    last_ts: &std::sync::atomic::AtomicI64,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let mut previous = 0;
    let mut settled_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let consumed = stats.records_total();
        let rate = consumed - previous;
        previous = consumed;
        let wm = stats.watermark();
        let delay = if wm > i64::MIN && wm < i64::MAX {
            format!("{:.1}s", (SystemClock.now_ms() - wm) as f64 / 1000.0)
        } else {
            "-".into()
        };
        let kinds: Vec<String> = ViolationKind::ALL
            .iter()
            .map(|k| format!("{} {}", short(*k), stats.violations_of(*k)))
            .collect();
        let storms_ended = storms_of(stats, Phase::Ended);
        println!(
            "[{:>4}s] in {rate:>6} rec/s ({consumed}/{} read) | violations: {} | dead letters {} | storms: {} active, {} started | watermark delay {delay}",
            started.elapsed().as_secs(),
            produced.load(Ordering::Relaxed),
            kinds.join(", "),
            stats.dead_letters_total(),
            stats.active_storms_total(),
            storms_of(stats, Phase::Started),
        );
        if producing.load(Ordering::SeqCst) {
            continue;
        }
        // A transaction whose END never comes is decided a timeout after
        // its first record.
        let final_verdicts = last_ts.load(Ordering::Relaxed)
            + (workload::DEADLINE_MS + workload::LATE_WINDOW_MS).max(workload::TX_TIMEOUT_MS);
        let done = consumed >= produced.load(Ordering::Relaxed)
            && wm > final_verdicts
            && storms_ended >= storms.len() as u64;
        let since = *settled_since.get_or_insert_with(Instant::now);
        if done || since.elapsed() > SETTLE_TIMEOUT {
            if !done {
                println!(
                    "vigil demo: the last verdicts did not come within {}s",
                    SETTLE_TIMEOUT.as_secs()
                );
            }
            return;
        }
    }
}

/// Storm events of a phase, over every scope type.
fn storms_of(stats: &Stats, phase: Phase) -> u64 {
    ScopeType::ALL
        .iter()
        .map(|&t| stats.storm_events_of(t, phase))
        .sum()
}

fn short(kind: ViolationKind) -> &'static str {
    match kind {
        ViolationKind::MissingInvalidation => "missing",
        ViolationKind::LateInvalidation => "late",
        ViolationKind::StaleFill => "stale",
        ViolationKind::FillAfterDelete => "fill-after-delete",
        ViolationKind::VersionRegression => "regression",
        ViolationKind::VersionGap => "gap",
        ViolationKind::ConflictingVersion => "conflict",
        ViolationKind::IncompleteTransaction => "incomplete-tx",
        ViolationKind::UnterminatedTransaction => "unterminated-tx",
        ViolationKind::TransactionNotInvalidated => "tx-not-invalidated",
    }
}

fn print_table(generator: &Generator, stats: &Stats) {
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for e in generator.expected() {
        *expected.entry(e.kind).or_default() += 1;
    }
    let injected = &generator.stats().injected;
    println!();
    println!(
        "{:<24} {:>9} {:>9} {:>9}",
        "kind", "injected", "expected", "detected"
    );
    let mut all_match = true;
    for kind in ViolationKind::ALL {
        let name = kind.as_str();
        let (inj, exp, det) = (
            injected.get(name).copied().unwrap_or(0),
            expected.get(name).copied().unwrap_or(0),
            stats.violations_of(kind),
        );
        all_match &= exp == det;
        let mark = if exp == det { "ok" } else { "DIFFERS" };
        println!("{name:<24} {inj:>9} {exp:>9} {det:>9}  {mark}");
    }
    println!(
        "\n(a late invalidation is first a missing one: each injected late fault expects a missing_invalidation and a late_invalidation)"
    );
    let storms = generator.expected_storms();
    println!(
        "\n{:<10} {:<14} {:>9} {:>9} {:>9}",
        "storm", "scope", "injected", "started", "ended"
    );
    for t in ScopeType::ALL {
        let injected: Vec<&ExpectedStorm> = storms.iter().filter(|s| s.scope_type == t).collect();
        let (started, ended) = (
            stats.storm_events_of(t, Phase::Started),
            stats.storm_events_of(t, Phase::Ended),
        );
        if injected.is_empty() && started == 0 {
            continue;
        }
        let n = injected.len() as u64;
        let scope = injected.first().map_or("-", |s| s.scope.as_str());
        all_match &= started == n && ended == n;
        let mark = if started == n && ended == n {
            "ok"
        } else {
            "DIFFERS"
        };
        println!(
            "{:<10} {scope:<14} {n:>9} {started:>9} {ended:>9}  {mark}",
            t.as_str()
        );
    }
    println!(
        "{}",
        if all_match {
            "every injected fault and storm was detected, and nothing else."
        } else {
            "detected differs from expected (see DIFFERS above)."
        }
    );
}
