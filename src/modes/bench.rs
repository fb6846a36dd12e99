//! `vigil bench`: the end-to-end benchmark. Generates workloads with the
//! generator of `vigil gen` and measures, on this machine:
//!
//! - `vigil check` (a child process) on files: records per second, CPU time
//!   per record, time per record in each stage, peak memory, for each
//!   EVENTS:KEYS size asked, on Debezium values or on `kcat -J` lines of five
//!   CDC formats; then, in this process, the parse floor of the same files
//!   ([`parse_floor`]);
//! - `vigil run` through the embedded broker (librdkafka's mock cluster, in
//!   this process): records per second from its first record read to its
//!   last, the producer kept just ahead of vigil (the mock keeps only about
//!   5 MB a partition), and the CPU time per record of vigil's threads and
//!   of the others (the broker, the load generator);
//! - latency at a fixed rate: from a record's produce time to its
//!   violation's produce time, for the kinds that fire without waiting
//!   (regression, gap, conflict), and how long after the watermark passes a
//!   deadline its missing invalidation is produced; with
//!   `--latency-two-stages` also through a `--stage one` and a `--stage two`
//!   pipeline, from stage one's watermark to stage two's violation;
//! - decoding ([`bench_decode`]): the CPU time per record of decoding the
//!   same Debezium changes written by the JSON converter and by Confluent's
//!   Avro and Protobuf converters.
//!
//! - scaling out ([`instances`], `--instances`): one `vigil run --stage
//!   both` process, then one `--stage one` and N `--stage two` processes,
//!   on a workload whose cache topic is keyed by service.
//!
//! The report is one JSON object on stdout; progress goes to stderr.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

mod instances;

use super::assemble::{open_store, serve, serve_stage};
use super::shutdown::Control;
use super::{ExitStatus, produce_generated};
use crate::cli::BenchArgs;
use crate::config::{Config, Dur, KafkaValue};
use crate::events::ViolationKind;
use crate::formats::{
    DecodedCdc, Flattened, decode_avro_envelope, decode_avro_key, decode_cdc, decode_key,
    decode_protobuf_envelope, decode_protobuf_key, framed, unescape,
};
use crate::ingest::Stream;
use crate::io::file::{Line, LineReader};
use crate::io::kafka::repartition::Stage;
use crate::registry::{ProtoSchema, RegistryError, WriterSchema};
use crate::state::Store;
use crate::telemetry::{Stats, thread_cpu_seconds, threads_cpu_seconds};
use crate::time::{Clock, SystemClock};
use crate::workload::encode::CdcFormat;
use crate::workload::storms::Traffic;
use crate::workload::{self, FaultRates, GenRecord, Generator, Spec, TxFaults};

/// Partitions of the benchmark topics: the mock cluster keeps about 5 MB
/// a partition.
const PARTITIONS: i32 = 12;
/// Partitions of the latency measure's input topics. The mock cluster finds the
/// records a fetch asks for by a scan of the partition's record batches
/// (librdkafka's `rd_kafka_mock_msgset_find`), and a live stream makes one
/// small batch a partition every `linger.ms`: with 12 partitions a topic it
/// spent most of a core scanning, and it delayed vigil's fetches, at rates
/// vigil itself kept up with.
const LATENCY_PARTITIONS: i32 = 2;
/// Records produced ahead of what vigil has read, at most.
const MAX_BACKLOG: u64 = 100_000;
/// The share of the `vigil run` throughput that the latency measure streams
/// at, unless `--latency-rate` says otherwise.
const LATENCY_LOAD: f64 = 0.7;
/// The first records of the latency measure warm the clients up (the
/// producer's first metadata, the consumer's first fetches): their
/// latencies are not counted.
const LATENCY_WARMUP_MS: i64 = 1_000;
/// How long a phase may wait for vigil to catch up.
const CATCH_UP: Duration = Duration::from_secs(300);
/// How long the delivery floor's consumer may take, after the last record is
/// sent, to have read every one (it keeps up with the rate, or the floor
/// means nothing).
const FLOOR_CATCH_UP: Duration = Duration::from_secs(20);

const VIOLATIONS: &str = "vigil.violations";
const DLQ: &str = "vigil.dlq";

/// Fault rates of the benchmark workloads: the `vigil gen` defaults, with
/// more entity faults so that latency has samples.
const FAULTS: FaultRates = FaultRates {
    missing: 0.01,
    late: 0.01,
    stale_fill: 0.01,
    fill_after_delete: 0.05,
    regression: 0.01,
    gap: 0.01,
    conflict: 0.01,
    duplicate: 0.01,
};

/// The files a `vigil check` run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum CheckInput {
    /// Debezium values without the schema wrapper, one a line; three tables.
    Debezium,
    /// `kcat -J` lines; CDC records in the five formats of
    /// [`CdcFormat::ALL`], one per table (five tables).
    KcatFiveFormats,
}

#[derive(Debug, Serialize)]
struct CheckFigures {
    input: CheckInput,
    events: u64,
    keys: u64,
    /// Records `vigil check` read: `events`, and the rest of the episodes
    /// in flight when the generator reached it.
    records: u64,
    input_bytes: u64,
    records_per_second: f64,
    elapsed_seconds: f64,
    /// CPU time of the `vigil check` process (user + system, all threads)
    /// per record read.
    cpu_us_per_record: Option<f64>,
    /// CPU time per record of the parse floor on the same files.
    floor_cpu_us_per_record: Option<f64>,
    /// `cpu_us_per_record` over `floor_cpu_us_per_record`.
    cpu_over_floor: Option<f64>,
    peak_rss_bytes: Option<u64>,
    stage_ns_per_record: Value,
    violations: u64,
    expected_violations: u64,
    /// With `--transactions`: the same records checked with the
    /// transaction checks off and on.
    #[serde(skip_serializing_if = "Option::is_none")]
    transactions: Option<TxCost>,
}

#[derive(Debug, Serialize)]
struct KafkaFigures {
    events: u64,
    /// From `vigil run`'s start to its first record read: mostly the
    /// consumer group's first join, about 3 s on the embedded broker.
    seconds_to_first_record: f64,
    /// The records read from the first record read to the last, over that
    /// time: the startup above is not in it.
    records_per_second: f64,
    elapsed_seconds: f64,
    /// CPU time (user + system) per record over the same time, of vigil's
    /// threads: its pipeline's and its Kafka clients'.
    vigil_cpu_us_per_record: Option<f64>,
    /// The same of the bench's other threads: the embedded broker's, and
    /// the load generator's and its producer's.
    broker_and_generator_cpu_us_per_record: Option<f64>,
}

/// Where the run's measure starts: at vigil's first record read.
struct RunStart {
    at: Instant,
    /// Records read by then.
    read: u64,
    /// The CPU time of each thread then.
    cpu: Option<HashMap<u32, f64>>,
}

#[derive(Debug, Clone, Serialize)]
struct Percentiles {
    samples: usize,
    p50_ms: i64,
    p99_ms: i64,
    max_ms: i64,
}

#[derive(Debug, Serialize)]
struct LatencyFigures {
    rate: u64,
    seconds: u64,
    /// Produce of the record to produce of its violation, for kinds that
    /// fire at once (regression, gap, conflict).
    immediate: Option<Percentiles>,
    /// Produce of a record to its receipt by a consumer that does nothing
    /// else, on the same workload through a new embedded broker, one pass
    /// (see [`delivery_floor`]): the part of `immediate` that the load
    /// generator's batching and the broker take.
    delivery_floor: Option<Percentiles>,
    /// Produce of a missing invalidation after the watermark passed its
    /// deadline.
    deadline_firing: Option<Percentiles>,
    /// How long after a deadline (plus the allowed lateness; event times
    /// are live) the watermark passed it: the watermark waits for the
    /// slowest input partition, up to `detect.idle_timeout` for a quiet one.
    watermark_wait: Option<Percentiles>,
}

/// CPU time per record of decoding Debezium changes (value and key) into
/// the format-neutral change, in each wire format.
#[derive(Debug, Serialize)]
struct DecodeFigures {
    /// Changes decoded, the same ones in each format.
    records: usize,
    /// The JSON converter's form, without the schema wrapper.
    json_ns_per_record: f64,
    /// Confluent's Avro framing, with the writer schemas at hand (as the
    /// registry client keeps them).
    avro_ns_per_record: f64,
    avro_over_json: f64,
    /// Confluent's Protobuf framing, with the schemas compiled (as the
    /// registry client keeps them).
    protobuf_ns_per_record: f64,
    protobuf_over_json: f64,
    json_bytes_per_record: f64,
    avro_bytes_per_record: f64,
    protobuf_bytes_per_record: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Value,
    check: Vec<CheckFigures>,
    kafka: Option<KafkaFigures>,
    latency: Option<LatencyFigures>,
    /// With `--latency-two-stages`: the same measure through a `--stage
    /// one` and a `--stage two` pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_two_stages: Option<LatencyFigures>,
    decode: Option<DecodeFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<instances::InstancesFigures>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitStatus> {
    ensure!(
        args.skip_kafka || args.kafka_events > 0,
        "--kafka-events 0: no records to run (--skip-kafka skips the run and its latency measure)"
    );
    let work = args.work.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut report = Report {
        machine: machine(),
        check: Vec::new(),
        kafka: None,
        latency: None,
        latency_two_stages: None,
        decode: None,
        instances: None,
    };
    let debezium = args.check.iter().map(|s| (s, CheckInput::Debezium));
    let kcat = (args.check_kcat.iter()).map(|s| (s, CheckInput::KcatFiveFormats));
    for (size, input) in debezium.chain(kcat) {
        let (events, keys) = parse_size(size)?;
        let tx_rounds = (args.transactions && input == CheckInput::Debezium)
            .then_some(args.transaction_rounds as usize);
        report
            .check
            .push(bench_check(&work, input, events, keys, tx_rounds)?);
    }
    let mut rate = args.latency_rate;
    // The delivery floor is measured once, for the latency measures of the
    // run, which share its rate.
    let mut floor = None;
    let mut floor_at = |at| -> anyhow::Result<Option<Percentiles>> {
        if floor.is_none() {
            floor = Some(delivery_floor(
                &work,
                at,
                args.latency_seconds.0,
                args.keys,
            )?);
        }
        Ok(floor.clone().flatten())
    };
    if !args.skip_kafka {
        let kafka = bench_kafka(&work, args.kafka_events, args.keys)?;
        let at = *rate.get_or_insert((kafka.records_per_second * LATENCY_LOAD) as u64);
        report.kafka = Some(kafka);
        report.latency = Some(bench_latency(
            &work,
            at,
            args.latency_seconds.0,
            args.keys,
            Layout::Both,
            floor_at(at)?,
        )?);
    }
    if args.latency_two_stages {
        let Some(at) = rate else {
            bail!("--latency-two-stages with --skip-kafka needs --latency-rate");
        };
        report.latency_two_stages = Some(bench_latency(
            &work,
            at,
            args.latency_seconds.0,
            args.keys,
            Layout::TwoStages,
            floor_at(at)?,
        )?);
    }
    if !args.instances.is_empty() {
        report.instances = Some(instances::bench_instances(
            &work,
            &args.instances,
            args.kafka_events,
            args.keys,
        )?);
    }
    if args.decode_records > 0 {
        report.decode = Some(bench_decode(args.decode_records, args.keys)?);
    }
    let _ = std::fs::remove_dir_all(&work);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitStatus::Ok)
}

fn parse_size(text: &str) -> anyhow::Result<(u64, u64)> {
    let (e, k) = text
        .split_once(':')
        .with_context(|| format!("size {text:?}: expected EVENTS:KEYS, like 1000000:1000000"))?;
    let number = |s: &str| -> anyhow::Result<u64> {
        s.replace('_', "")
            .parse()
            .with_context(|| format!("size {text:?}: {s:?} is not a number"))
    };
    Ok((number(e)?, number(k)?))
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string));
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .map(str::to_string)
    });
    serde_json::json!({ "cpus": cpus, "memory": mem, "cpu": model, "vigil": env!("CARGO_PKG_VERSION") })
}

fn spec(events: u64, keys: u64, rate: u64, start_ms: i64, partitions: i32) -> Spec {
    Spec {
        events,
        keys,
        tables: 3,
        rate,
        format: CdcFormat::Debezium,
        seed: 7,
        faults: FAULTS,
        start_ms,
        partitions,
        traffic: Traffic::Steady,
        storms: None,
        transactions: None,
    }
}

/// How many times the decoding measure goes over its records, keeping the
/// fastest pass (the machine may be shared).
const DECODE_PASSES: usize = 5;

/// The decoding measure: the same generated changes in Debezium's JSON and
/// in Confluent's Avro and Protobuf framings, each decoded (value and key)
/// into the format-neutral change, timed by the thread's CPU clock.
fn bench_decode(records: u64, keys: u64) -> anyhow::Result<DecodeFigures> {
    eprintln!("vigil bench: decoding {records} Debezium changes, JSON, Avro and Protobuf");
    let changes = |format| -> (Generator, Vec<GenRecord>) {
        let spec = Spec {
            format,
            ..spec(
                records,
                keys,
                1_000_000,
                workload::START_MS,
                workload::PARTITIONS,
            )
        };
        let mut generator = Generator::new(spec);
        let changes = generator
            .by_ref()
            .filter(|r| r.stream == Stream::Cdc && r.value.is_some() && r.topic.starts_with("gen."))
            .collect();
        (generator, changes)
    };
    let (_, json_records) = changes(CdcFormat::Debezium);
    let (generator, avro) = changes(CdcFormat::DebeziumAvro);
    anyhow::ensure!(json_records.len() == avro.len(), "the two workloads differ");
    let schemas: HashMap<u32, WriterSchema> = generator
        .registered_schemas()
        .into_iter()
        .map(|s| Ok((s.id, WriterSchema::parse(s.id, &s.text, &[])?)))
        .collect::<Result<_, RegistryError>>()?;
    let json: Vec<(Option<&str>, Option<&str>)> = json_records
        .iter()
        .map(|r| {
            let key = r.key.as_deref().map(std::str::from_utf8).transpose()?;
            let value = r.value.as_deref().map(std::str::from_utf8).transpose()?;
            Ok((key, value))
        })
        .collect::<anyhow::Result<_>>()?;
    let json_ns = fastest_pass(json.len(), || {
        json.iter()
            .filter(|(key, value)| {
                let decoded = decode_cdc(*value, Flattened::Nowhere);
                let key = key.and_then(decode_key);
                matches!(decoded, Ok(DecodedCdc::Changes(_))) && key.is_some()
            })
            .count()
    })?;
    /// A record in Confluent's framing and its schema.
    fn framed_with<'a, S>(
        schemas: &'a HashMap<u32, S>,
        bytes: &'a Option<Vec<u8>>,
    ) -> Option<(&'a S, &'a [u8])> {
        let framed = bytes.as_deref().and_then(framed)?;
        Some((schemas.get(&framed.schema_id)?, framed.datum))
    }
    let avro_ns = fastest_pass(avro.len(), || {
        avro.iter()
            .filter(|r| {
                let value = framed_with(&schemas, &r.value)
                    .and_then(|(schema, datum)| decode_avro_envelope(schema, datum).ok());
                let decoded = value.as_ref().map(|v| v.view());
                let key = framed_with(&schemas, &r.key)
                    .and_then(|(schema, datum)| decode_avro_key(schema, datum).ok().flatten());
                let row = key.as_ref().map(|k| k.row());
                matches!(decoded, Some(Ok(DecodedCdc::Changes(_)))) && row.is_some()
            })
            .count()
    })?;
    let (generator, protobuf) = changes(CdcFormat::DebeziumProtobuf);
    anyhow::ensure!(
        json_records.len() == protobuf.len(),
        "the two workloads differ"
    );
    let proto_schemas: HashMap<u32, ProtoSchema> = generator
        .registered_schemas()
        .into_iter()
        .map(|s| Ok((s.id, ProtoSchema::compile(s.id, &s.text, &[])?)))
        .collect::<Result<_, RegistryError>>()?;
    let protobuf_ns = fastest_pass(protobuf.len(), || {
        protobuf
            .iter()
            .filter(|r| {
                let value = framed_with(&proto_schemas, &r.value)
                    .and_then(|(schema, datum)| decode_protobuf_envelope(schema, datum).ok());
                let decoded = value.as_ref().map(|v| v.view());
                let key = framed_with(&proto_schemas, &r.key)
                    .and_then(|(schema, datum)| decode_protobuf_key(schema, datum).ok().flatten());
                let row = key.as_ref().map(|k| k.row());
                matches!(decoded, Some(Ok(DecodedCdc::Changes(_)))) && row.is_some()
            })
            .count()
    })?;
    let bytes = |records: &[GenRecord]| -> f64 {
        let total: usize = records
            .iter()
            .map(|r| r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
            .sum();
        total as f64 / records.len().max(1) as f64
    };
    let figures = DecodeFigures {
        records: avro.len(),
        json_ns_per_record: json_ns,
        avro_ns_per_record: avro_ns,
        avro_over_json: avro_ns / json_ns,
        protobuf_ns_per_record: protobuf_ns,
        protobuf_over_json: protobuf_ns / json_ns,
        json_bytes_per_record: bytes(&json_records),
        avro_bytes_per_record: bytes(&avro),
        protobuf_bytes_per_record: bytes(&protobuf),
    };
    eprintln!(
        "vigil bench: decoding a change: JSON {:.0} ns, Avro {:.0} ns ({:.2} times), Protobuf {:.0} ns ({:.2} times)",
        figures.json_ns_per_record,
        figures.avro_ns_per_record,
        figures.avro_over_json,
        figures.protobuf_ns_per_record,
        figures.protobuf_over_json
    );
    Ok(figures)
}

/// The CPU time per record of the fastest of [`DECODE_PASSES`] passes of
/// `decode_all`, which returns how many of the `records` decoded: all of
/// them, or the measure is void.
fn fastest_pass(records: usize, mut decode_all: impl FnMut() -> usize) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..DECODE_PASSES {
        let start = thread_cpu_seconds().context("no thread CPU clock")?;
        let decoded = decode_all();
        let end = thread_cpu_seconds().context("no thread CPU clock")?;
        anyhow::ensure!(
            decoded == records,
            "{} of {records} records did not decode",
            records - decoded
        );
        best = best.min(end - start);
    }
    Ok(best * 1e9 / records.max(1) as f64)
}

/// `vigil check` in a child process over a generated workload, then the
/// parse floor of its files. With `tx_rounds`, the workload carries
/// transaction metadata and `vigil check` runs on the same files that many
/// times with `detect.transactions` off and as many with it on,
/// alternately ([`TxCost`]); the other figures are of the last run with it
/// on.
fn bench_check(
    work: &Path,
    input: CheckInput,
    events: u64,
    keys: u64,
    tx_rounds: Option<usize>,
) -> anyhow::Result<CheckFigures> {
    let dir = work.join(format!("check-{events}-{keys}"));
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "vigil bench: generating {events} records over {keys} keys ({input:?}{})",
        if tx_rounds.is_some() {
            ", transactions"
        } else {
            ""
        }
    );
    let spec = Spec {
        transactions: tx_rounds.map(|_| TxFaults::GEN),
        ..spec(
            events,
            keys,
            1_000_000,
            workload::START_MS,
            workload::PARTITIONS,
        )
    };
    let kcat = input == CheckInput::KcatFiveFormats;
    let mut generator = if kcat {
        let tables = CdcFormat::ALL.len() as u32;
        Generator::with_formats(Spec { tables, ..spec }, &CdcFormat::ALL)
    } else {
        Generator::new(spec)
    };
    super::generate::write(&mut generator, &dir, kcat)?;
    let expected = generator.expected().len() as u64;
    let files = [dir.join("cdc.ndjson"), dir.join("cache.ndjson")];
    let input_bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    eprintln!(
        "vigil bench: vigil check on {events} records ({} MB)",
        input_bytes >> 20
    );
    let on = dir.join("vigil.toml");
    let (summary, transactions) = match tx_rounds {
        None => (checked(&dir, &on, expected)?, None),
        Some(rounds) => {
            let off = dir.join("vigil-off.toml");
            std::fs::write(&off, generator.config_toml_checking(false))?;
            let expected_off = generator
                .expected()
                .iter()
                .filter(|e| !ViolationKind::parse(e.kind).is_some_and(|k| k.is_transaction_level()))
                .count() as u64;
            let mut cost = TxCost::default();
            let mut last = Value::Null;
            for round in 0..rounds {
                // Alternate which goes first, so that neither is always the
                // one after a pause.
                let mut run = |checking: bool| -> anyhow::Result<CheckRun> {
                    let summary = if checking {
                        checked(&dir, &on, expected)?
                    } else {
                        checked(&dir, &off, expected_off)?
                    };
                    let run = CheckRun::of(&summary);
                    if checking {
                        last = summary;
                    }
                    Ok(run)
                };
                let (off_run, on_run) = if round % 2 == 0 {
                    let off_run = run(false)?;
                    (off_run, run(true)?)
                } else {
                    let on_run = run(true)?;
                    (run(false)?, on_run)
                };
                eprintln!(
                    "vigil bench: transactions off/on, round {}: {:.0} / {:.0} records/s, CPU {} / {} µs a record",
                    round + 1,
                    off_run.records_per_second,
                    on_run.records_per_second,
                    micros(off_run.cpu_us_per_record),
                    micros(on_run.cpu_us_per_record),
                );
                cost.off.push(off_run);
                cost.on.push(on_run);
            }
            cost.settle();
            eprintln!(
                "vigil bench: transactions on over off, medians: records/s {}, CPU a record {}",
                ratio(cost.median_records_per_second_ratio),
                ratio(cost.median_cpu_ratio),
            );
            (last, Some(cost))
        }
    };
    eprintln!("vigil bench: parse floor of the same files");
    let floor = parse_floor(&files, kcat)?;
    let _ = std::fs::remove_dir_all(&dir);
    let cpu = summary["cpu_us_per_record"].as_f64();
    let floor_cpu = floor.cpu_us_per_record();
    let figures = CheckFigures {
        input,
        events,
        keys,
        records: records_read(&summary),
        input_bytes,
        records_per_second: summary["events_per_second"].as_f64().unwrap_or(0.0),
        elapsed_seconds: summary["elapsed_seconds"].as_f64().unwrap_or(0.0),
        cpu_us_per_record: cpu,
        floor_cpu_us_per_record: floor_cpu,
        cpu_over_floor: cpu.zip(floor_cpu).map(|(c, f)| c / f),
        peak_rss_bytes: summary["peak_rss_bytes"].as_u64(),
        stage_ns_per_record: summary["stage_ns_per_record"].clone(),
        violations: summary["violations_total"].as_u64().unwrap_or(0),
        expected_violations: expected,
        transactions,
    };
    eprintln!(
        "vigil bench: check {events}:{keys} ({input:?}): {:.0} records/s, CPU {} µs a record, \
         parse floor {} µs a record ({} times), peak {} MiB",
        figures.records_per_second,
        micros(figures.cpu_us_per_record),
        micros(figures.floor_cpu_us_per_record),
        figures
            .cpu_over_floor
            .map_or("?".to_string(), |r| format!("{r:.1}")),
        figures.peak_rss_bytes.unwrap_or(0) >> 20
    );
    if floor.lines != figures.records {
        bail!(
            "the parse floor read {} lines where vigil check read {} records",
            floor.lines,
            figures.records
        );
    }
    Ok(figures)
}

fn micros(us: Option<f64>) -> String {
    us.map_or("?".to_string(), |us| format!("{us:.2}"))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("?".to_string(), |r| format!("{:+.1} %", (r - 1.0) * 100.0))
}

fn records_read(summary: &Value) -> u64 {
    summary["records_read"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// Runs `vigil check` on the files of `dir` with `config`, checks that it
/// reported `expected` violations, and returns its summary.
fn checked(dir: &Path, config: &Path, expected: u64) -> anyhow::Result<Value> {
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let output = std::process::Command::new(std::env::current_exe()?)
        .arg("check")
        .arg("--quiet")
        .arg("--config")
        .arg(config)
        .arg("--cdc")
        .arg(dir.join("cdc.ndjson"))
        .arg("--cache")
        .arg(dir.join("cache.ndjson"))
        .arg("--out")
        .arg(&out)
        .output()
        .context("running vigil check")?;
    if !output.status.success() {
        bail!(
            "vigil check failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let summary: Value =
        serde_json::from_slice(&output.stdout).context("reading the summary of vigil check")?;
    let violations = summary["violations_total"].as_u64().unwrap_or(0);
    if violations != expected {
        bail!(
            "vigil check with {} reported {violations} violations where {expected} were expected",
            config.display()
        );
    }
    Ok(summary)
}

/// One `vigil check` run of the transaction cost measure.
#[derive(Debug, Serialize)]
struct CheckRun {
    records_per_second: f64,
    cpu_us_per_record: Option<f64>,
    peak_rss_bytes: Option<u64>,
}

impl CheckRun {
    fn of(summary: &Value) -> Self {
        CheckRun {
            records_per_second: summary["events_per_second"].as_f64().unwrap_or(0.0),
            cpu_us_per_record: summary["cpu_us_per_record"].as_f64(),
            peak_rss_bytes: summary["peak_rss_bytes"].as_u64(),
        }
    }
}

/// The cost of the transaction checks: `vigil check` on the same records
/// (carrying transaction metadata) with `detect.transactions` off and on,
/// run alternately, and the medians of on over off.
#[derive(Debug, Default, Serialize)]
struct TxCost {
    off: Vec<CheckRun>,
    on: Vec<CheckRun>,
    /// Median records/s on over median records/s off.
    median_records_per_second_ratio: Option<f64>,
    /// Median CPU a record on over median CPU a record off.
    median_cpu_ratio: Option<f64>,
}

impl TxCost {
    fn settle(&mut self) {
        let median = |mut v: Vec<f64>| -> Option<f64> {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            match n {
                0 => None,
                _ if n % 2 == 1 => Some(v[n / 2]),
                _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
            }
        };
        let rps = |runs: &[CheckRun]| median(runs.iter().map(|r| r.records_per_second).collect());
        let cpu =
            |runs: &[CheckRun]| median(runs.iter().filter_map(|r| r.cpu_us_per_record).collect());
        let over = |on: Option<f64>, off: Option<f64>| {
            on.zip(off.filter(|o| *o > 0.0)).map(|(a, b)| a / b)
        };
        self.median_records_per_second_ratio = over(rps(&self.on), rps(&self.off));
        self.median_cpu_ratio = over(cpu(&self.on), cpu(&self.off));
    }
}

/// Lines longer than this fail the parse floor (`vigil check` would
/// dead-letter them; generated lines are a few KB).
const FLOOR_MAX_LINE: usize = 1 << 30;

/// What the parse floor measured.
struct Floor {
    /// Lines parsed (blank lines are not records, and are skipped).
    lines: u64,
    /// CPU time of the thread that read and parsed them.
    cpu_seconds: Option<f64>,
}

impl Floor {
    fn cpu_us_per_record(&self) -> Option<f64> {
        self.cpu_seconds
            .filter(|_| self.lines > 0)
            .map(|s| s * 1e6 / self.lines as f64)
    }
}

/// A `kcat -J` line as the parse floor reads it: only the payload is kept,
/// borrowed, still quoted and escaped.
#[derive(Deserialize)]
struct KcatPayload<'a> {
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// The work `vigil check` cannot avoid on `files`: reading every line (with
/// its line reader) and parsing it with serde_json, the fastest JSON parser
/// in the build, borrowed, into [`IgnoredAny`]; for a `kcat -J` line
/// (`kcat`), parsing the line, unescaping its payload into a reused buffer
/// and parsing that. Nothing else: no field is read, nothing is built. Its
/// cost is the CPU time of this thread, so that the other threads of the
/// bench do not count.
fn parse_floor(files: &[PathBuf], kcat: bool) -> anyhow::Result<Floor> {
    let started = thread_cpu_seconds();
    let mut payload = String::new();
    let mut lines = 0u64;
    for path in files {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut reader = LineReader::new(BufReader::with_capacity(1 << 20, file), FLOOR_MAX_LINE);
        while let Some(line) = reader.next_line()? {
            let Line::Text(bytes) = line else {
                bail!(
                    "{}: a line longer than {FLOOR_MAX_LINE} bytes",
                    path.display()
                );
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines += 1;
            let text = std::str::from_utf8(bytes)?;
            if kcat {
                let line: KcatPayload = serde_json::from_str(text)?;
                if let Some(raw) = line.payload {
                    let payload = unescape(raw.get(), &mut payload)?;
                    serde_json::from_str::<IgnoredAny>(payload)?;
                }
            } else {
                serde_json::from_str::<IgnoredAny>(text)?;
            }
        }
    }
    let cpu_seconds = started.zip(thread_cpu_seconds()).map(|(a, b)| b - a);
    Ok(Floor { lines, cpu_seconds })
}

/// An embedded broker with the workload's topics, and a `vigil run`
/// configuration pointed at it.
struct Bench {
    cluster: MockCluster<'static, DefaultProducerContext>,
    config: Config,
}

impl Bench {
    fn new(generator: &Generator, state: PathBuf, partitions: i32) -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("starting the embedded broker")?;
        for topic in generator.topics() {
            cluster.create_topic(&topic, partitions, 1)?;
        }
        // vigil only produces to it: the broker scans it once, at the end.
        cluster.create_topic(VIOLATIONS, PARTITIONS, 1)?;
        cluster.create_topic(DLQ, 1, 1)?;
        let mut config =
            Config::parse_with_env("vigil bench", &generator.config_toml(), Vec::new())?;
        config.kafka.insert(
            "bootstrap.servers".into(),
            KafkaValue(cluster.bootstrap_servers()),
        );
        let (cdc, cache): (Vec<String>, Vec<String>) = generator
            .topics()
            .into_iter()
            .partition(|t| generator.stream_of_topic(t) == Some(Stream::Cdc));
        config.inputs.cdc_topics = cdc;
        config.inputs.cache_topics = cache;
        config.inputs.group_id = "vigil-bench".into();
        // The mock broker answers a fetch of an empty partition only when
        // the fetch wait runs out (a real broker answers when data comes):
        // keep the wait short, or it dominates the latency.
        config
            .kafka
            .insert("fetch.wait.max.ms".into(), KafkaValue("5".into()));
        config.outputs.violations_topic = VIOLATIONS.into();
        config.outputs.dlq_topic = DLQ.into();
        config.metrics.listen = String::new();
        config.detect.idle_timeout = Dur::from_secs(1);
        config.state.path = state;
        config.validate_for_run()?;
        Ok(Bench { cluster, config })
    }

    fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

/// Remembers when each record was produced, by its position.
struct ProduceTimes(Mutex<HashMap<(String, i32, i64), i64>>);

impl ClientContext for ProduceTimes {}

impl ProducerContext for ProduceTimes {
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, produced_ms: Box<i64>) {
        if let Ok(msg) = result {
            let key = (msg.topic().to_string(), msg.partition(), msg.offset());
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, *produced_ms);
        }
    }
}

impl ProduceTimes {
    fn new() -> Self {
        ProduceTimes(Mutex::new(HashMap::new()))
    }
}

/// The load generator's producer. The latency measures give it
/// [`ProduceTimes`]; the others `DefaultProducerContext`, which does
/// nothing on delivery (the throughput measure's producer shares the two
/// cores with vigil: remembering 300,000 produce times it never reads
/// would be load vigil does not cause).
fn producer<C: ProducerContext + 'static>(
    bootstrap: &str,
    context: C,
) -> anyhow::Result<ThreadedProducer<C>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(context)
        .context("creating the workload producer")
}

/// Waits until `done` holds, checking every millisecond, for at most `limit`.
fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(1));
    }
    true
}

/// `vigil run` reading as fast as it can, the producer kept just ahead.
/// Measured from vigil's first record read to its last, so that the
/// consumer group's join is not counted as reading.
fn bench_kafka(work: &Path, events: u64, keys: u64) -> anyhow::Result<KafkaFigures> {
    eprintln!("vigil bench: vigil run through the embedded broker, {events} records");
    let clock = SystemClock;
    let mut generator = Generator::new(spec(events, keys, 1_000_000, clock.now_ms(), PARTITIONS));
    let state = work.join("kafka-state");
    let bench = Bench::new(&generator, state.clone(), PARTITIONS)?;
    let store = open_store(&state, bench.config.state.cache_size)?;
    let stats = Arc::new(Stats::default());
    let control = Control::default();
    let producer = producer(&bench.bootstrap(), DefaultProducerContext)?;
    // The producer starts a thread for each broker once it knows them: from
    // then on, every thread of this process is the broker's or the load
    // generator's, until vigil starts its own.
    producer
        .client()
        .fetch_metadata(None, CATCH_UP)
        .context("reading the embedded broker's metadata")?;
    let others: HashSet<u32> = threads_cpu_seconds()
        .map(|threads| threads.into_keys().collect())
        .unwrap_or_default();
    let mut produced = 0u64;
    let start = OnceCell::new();
    let spawned = Instant::now();
    // Reads how many records vigil has read, noting the start of the
    // measure at the first.
    let read = || {
        let read = stats.records_total();
        if read > 0 {
            start.get_or_init(|| RunStart {
                at: Instant::now(),
                read,
                cpu: threads_cpu_seconds(),
            });
        }
        read
    };
    let (end, cpu_at_end) = std::thread::scope(|s| {
        let pipeline = s.spawn(|| serve(&bench.config, store, Arc::clone(&stats), &control));
        for record in generator.by_ref() {
            if !wait_until(CATCH_UP, || produced.saturating_sub(read()) < MAX_BACKLOG) {
                bail!(
                    "vigil did not keep up: {} of {produced} records read",
                    stats.records_total()
                );
            }
            let now = clock.now_ms();
            produce_generated(&producer, &record, now, ())?;
            produced += 1;
        }
        producer.flush(CATCH_UP).context("flushing the workload")?;
        let caught_up = wait_until(CATCH_UP, || read() >= produced);
        let end = (Instant::now(), threads_cpu_seconds());
        control.stop.store(true, Ordering::SeqCst);
        pipeline.join().expect("the pipeline does not panic")?;
        if !caught_up {
            bail!("vigil read {} of {produced} records", stats.records_total());
        }
        Ok(end)
    })?;
    let start = start.into_inner().context("vigil read no record")?;
    let elapsed = end.duration_since(start.at);
    let measured = produced - start.read;
    let split = start
        .cpu
        .zip(cpu_at_end)
        .map(|(at_start, at_end)| cpu_split(&at_start, &at_end, &others));
    let per_record = |seconds: f64| seconds * 1e6 / measured as f64;
    let figures = KafkaFigures {
        events: produced,
        seconds_to_first_record: start.at.duration_since(spawned).as_secs_f64(),
        records_per_second: measured as f64 / elapsed.as_secs_f64(),
        elapsed_seconds: elapsed.as_secs_f64(),
        vigil_cpu_us_per_record: split.map(|(vigil, _)| per_record(vigil)),
        broker_and_generator_cpu_us_per_record: split.map(|(_, rest)| per_record(rest)),
    };
    eprintln!(
        "vigil bench: run: {:.0} records/s after its first record ({:.1} s from its start); \
         CPU a record: vigil {} µs, the broker and the load generator {} µs",
        figures.records_per_second,
        figures.seconds_to_first_record,
        micros(figures.vigil_cpu_us_per_record),
        micros(figures.broker_and_generator_cpu_us_per_record),
    );
    Ok(figures)
}

/// CPU seconds each thread used from `start` to `end` (a thread started
/// since counts from zero), summed over the threads not in `others` and
/// over those in it.
fn cpu_split(
    start: &HashMap<u32, f64>,
    end: &HashMap<u32, f64>,
    others: &HashSet<u32>,
) -> (f64, f64) {
    end.iter().fold((0.0, 0.0), |(mine, rest), (tid, cpu)| {
        let used = cpu - start.get(tid).copied().unwrap_or(0.0);
        if others.contains(tid) {
            (mine, rest + used)
        } else {
            (mine + used, rest)
        }
    })
}

/// Percentiles as the progress lines show them.
fn shown(p: &Option<Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            p.p50_ms, p.p99_ms, p.max_ms, p.samples
        ),
        None => "no samples".into(),
    }
}

fn percentiles(mut samples: Vec<i64>) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Some(Percentiles {
        samples: samples.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: *samples.last().expect("not empty"),
    })
}

/// Where the latency measure's records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One `vigil run --stage both` pipeline.
    Both,
    /// A `--stage one` and a `--stage two` pipeline through the repartition
    /// topic: key verdicts come from stage two, on stage one's watermark.
    TwoStages,
}

/// One pipeline of a latency measure.
struct Pipeline {
    stage: Stage,
    config: Config,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
}

/// The pipelines of a latency measure: the first reads the inputs (its
/// watermark is the one deadlines are measured against), the last fires
/// the deadlines.
struct Pipelines(Vec<Pipeline>);

impl Pipelines {
    fn new(bench: &Bench, state: &Path, layout: Layout) -> anyhow::Result<Self> {
        let stages = match layout {
            Layout::Both => vec![(Stage::Both, bench.config.clone())],
            Layout::TwoStages => {
                for topic in [
                    &bench.config.inputs.repartition_topic,
                    &bench.config.outputs.changelog_topic,
                    &bench.config.outputs.repartition_changelog_topic,
                ] {
                    bench.cluster.create_topic(topic, LATENCY_PARTITIONS, 1)?;
                }
                [Stage::One, Stage::Two]
                    .into_iter()
                    .map(|stage| {
                        let mut config = bench.config.clone();
                        config.state.path = state.join(format!("{stage:?}").to_lowercase());
                        config.validate_for_stages(stage == Stage::One)?;
                        Ok((stage, config))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
        let pipelines = stages
            .into_iter()
            .map(|(stage, config)| {
                let store = open_store(&config.state.path, config.state.cache_size)?;
                let stats = Arc::new(Stats::default());
                Ok(Pipeline {
                    stage,
                    config,
                    store,
                    stats,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Pipelines(pipelines))
    }

    /// The stats of the pipeline that reads the inputs.
    fn reader(&self) -> &Stats {
        &self.0[0].stats
    }

    /// The stats of the pipeline that fires the deadlines.
    fn judge(&self) -> &Stats {
        &self.0[self.0.len() - 1].stats
    }

    fn violations_total(&self) -> u64 {
        self.0.iter().map(|p| p.stats.violations_total()).sum()
    }
}

/// A live workload at `rate` for `seconds` through `layout`; latencies read
/// back from the violations topic, reported beside `floor`, the delivery
/// floor at the same rate (see [`delivery_floor`]).
fn bench_latency(
    work: &Path,
    rate: u64,
    seconds: Duration,
    keys: u64,
    layout: Layout,
    floor: Option<Percentiles>,
) -> anyhow::Result<LatencyFigures> {
    eprintln!(
        "vigil bench: latency at {rate} records/s for {}s ({layout:?})",
        seconds.as_secs()
    );
    let clock = SystemClock;
    // Time for the pipelines to join their groups (one at a time on the
    // embedded broker) before the first record is due.
    let lead_ms = match layout {
        Layout::Both => 5_000,
        Layout::TwoStages => 10_000,
    };
    let start_ms = clock.now_ms() + lead_ms;
    let events = rate * seconds.as_secs().max(1);
    let mut generator = Generator::new(spec(events, keys, rate, start_ms, LATENCY_PARTITIONS));
    let state = work.join(format!("latency-state-{layout:?}").to_lowercase());
    let bench = Bench::new(&generator, state.clone(), LATENCY_PARTITIONS)?;
    let lateness = bench.config.detect.allowed_lateness.as_millis_i64();
    let pipelines = Pipelines::new(&bench, &state, layout)?;
    let control = Control::default();
    let producer = producer(&bench.bootstrap(), ProduceTimes::new())?;
    let last_ts = AtomicI64::new(start_ms);
    let mut produced = 0u64;
    let mut moves = Vec::new();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let running: Vec<_> = (pipelines.0.iter())
            .map(|p| {
                let (store, stats) = (Arc::clone(&p.store), Arc::clone(&p.stats));
                let control = &control;
                s.spawn(move || serve_stage(&p.config, p.stage, store, stats, control))
            })
            .collect();
        let sampler = s.spawn(|| watermark_moves(pipelines.reader(), &control.stop));
        let streamed = stream_live(&mut generator, &producer, |ts_ms| {
            last_ts.fetch_max(ts_ms, Ordering::Relaxed);
            produced += 1;
        });
        let final_ms =
            last_ts.load(Ordering::Relaxed) + workload::DEADLINE_MS + workload::LATE_WINDOW_MS;
        let settled = streamed.is_ok()
            && wait_until(CATCH_UP, || {
                pipelines.reader().records_total() >= produced
                    && pipelines.judge().watermark() > final_ms
            });
        // Stop the pipelines and the sampler whatever happened, or the
        // scope waits for them forever.
        control.stop.store(true, Ordering::SeqCst);
        for pipeline in running {
            pipeline.join().expect("the pipeline does not panic")?;
        }
        moves = sampler.join().expect("the sampler does not panic");
        streamed?;
        if !settled {
            bail!("the last verdicts did not come in time");
        }
        Ok(())
    })?;
    let produce_times = std::mem::take(
        &mut *producer
            .context()
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    let measured_from = start_ms + LATENCY_WARMUP_MS;
    let (mut immediate, mut firing, mut waits) = (Vec::new(), Vec::new(), Vec::new());
    for (produced_at, event) in read_violations(&bench.bootstrap(), pipelines.violations_total())? {
        let data = &event["data"];
        match data["kind"].as_str() {
            Some("version_regression" | "version_gap" | "conflicting_version") => {
                let e = &data["evidence"][0];
                let position = (
                    e["topic"].as_str().unwrap_or_default().to_string(),
                    e["partition"].as_i64().unwrap_or(0) as i32,
                    e["offset"].as_i64().unwrap_or(-1),
                );
                if let Some(&source) = produce_times.get(&position)
                    && source >= measured_from
                {
                    immediate.push(produced_at - source);
                }
            }
            Some("missing_invalidation") => {
                let due = crate::formats::parse_rfc3339(event["time"].as_str().unwrap_or_default());
                let passed = due.filter(|due| *due >= measured_from).and_then(|due| {
                    let i = moves.partition_point(|&(_, wm)| wm < due);
                    moves.get(i).map(|&(wall, _)| (due, wall))
                });
                if let Some((due, wall)) = passed {
                    firing.push(produced_at - wall);
                    waits.push(wall - (due + lateness));
                }
            }
            _ => {}
        }
    }
    let figures = LatencyFigures {
        rate,
        seconds: seconds.as_secs(),
        immediate: percentiles(immediate),
        delivery_floor: floor,
        deadline_firing: percentiles(firing),
        watermark_wait: percentiles(waits),
    };
    eprintln!(
        "vigil bench: latency ({layout:?}): immediate {}; delivery floor {}; deadline firing {}",
        shown(&figures.immediate),
        shown(&figures.delivery_floor),
        shown(&figures.deadline_firing)
    );
    Ok(figures)
}

/// The delivery floor of the latency measure: the same live workload (rate,
/// seconds, topics and partitions, producer) through a new embedded broker,
/// read by a consumer with the fetch settings vigil has there and nothing
/// else to do. Each record's latency is its receipt time less its produce
/// time (the record's timestamp); the first second is not counted, as in
/// [`bench_latency`].
fn delivery_floor(
    work: &Path,
    rate: u64,
    seconds: Duration,
    keys: u64,
) -> anyhow::Result<Option<Percentiles>> {
    eprintln!(
        "vigil bench: delivery floor at {rate} records/s for {}s (a consumer that only reads)",
        seconds.as_secs()
    );
    let clock = SystemClock;
    let events = rate * seconds.as_secs().max(1);
    let workload =
        |start_ms| Generator::new(spec(events, keys, rate, start_ms, LATENCY_PARTITIONS));
    // The topics and configuration; the records come from a generator made
    // once the clients are (below).
    let setup = workload(0);
    let bench = Bench::new(&setup, work.join("floor-state"), LATENCY_PARTITIONS)?;
    let mut config = ClientConfig::new();
    for (name, value) in &bench.config.kafka {
        config.set(name, &value.0);
    }
    let consumer: BaseConsumer = config
        .set("group.id", "vigil-bench-floor")
        .set("enable.auto.commit", "false")
        // As vigil's consumer: should the broker answer a fetch out of
        // range, reading starts again from the first record instead of
        // skipping to the last.
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the floor's consumer")?;
    let mut partitions = TopicPartitionList::new();
    for topic in setup.topics() {
        for p in 0..LATENCY_PARTITIONS {
            partitions.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&partitions)?;
    let producer = producer(&bench.bootstrap(), ProduceTimes::new())?;
    // The clients are made: the records start after time for their first
    // metadata and fetches.
    let start_ms = clock.now_ms() + 2_000;
    let mut generator = workload(start_ms);
    let (received, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let measured_from = start_ms + LATENCY_WARMUP_MS;
    std::thread::scope(|s| -> anyhow::Result<Option<Percentiles>> {
        let reader = s.spawn(|| {
            let mut lags = Vec::new();
            // The next offset of each partition: records read again (after
            // such a reset) count once, at their first receipt.
            let mut next: HashMap<(String, i32), i64> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let now = clock.now_ms();
                let next = next
                    .entry((m.topic().to_string(), m.partition()))
                    .or_default();
                if m.offset() < *next {
                    continue;
                }
                *next = m.offset() + 1;
                received.fetch_add(1, Ordering::SeqCst);
                if let Some(ts) = m.timestamp().to_millis()
                    && ts >= measured_from
                {
                    lags.push(now - ts);
                }
            }
            lags
        });
        let mut produced = 0u64;
        let streamed = stream_live(&mut generator, &producer, |_| produced += 1);
        let settled = streamed.is_ok()
            && wait_until(FLOOR_CATCH_UP, || {
                received.load(Ordering::SeqCst) >= produced
            });
        stop.store(true, Ordering::SeqCst);
        let lags = reader.join().expect("the reader does not panic");
        streamed?;
        if !settled {
            bail!(
                "the floor's consumer read {} of the {produced} records in time",
                received.load(Ordering::SeqCst)
            );
        }
        Ok(percentiles(lags))
    })
}

/// Produces the workload live: each record at its event time (at once if
/// that has passed), stamped with the time it is produced; `produced` is
/// told each one's event time. Then waits for every record to be sent.
fn stream_live(
    generator: &mut Generator,
    producer: &ThreadedProducer<ProduceTimes>,
    mut produced: impl FnMut(i64),
) -> anyhow::Result<()> {
    let clock = SystemClock;
    for record in generator.by_ref() {
        let wait = record.ts_ms - clock.now_ms();
        if wait > 0 {
            std::thread::sleep(Duration::from_millis(wait as u64));
        }
        let now = clock.now_ms();
        produce_generated(producer, &record, now, Box::new(now))?;
        produced(record.ts_ms);
    }
    producer.flush(CATCH_UP).context("flushing the workload")
}

/// The wall-clock times (ms) at which the pipeline's watermark moved, with
/// the watermark, sampled every millisecond until `stop` is set.
fn watermark_moves(stats: &Stats, stop: &AtomicBool) -> Vec<(i64, i64)> {
    let clock = SystemClock;
    let mut moves: Vec<(i64, i64)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let wm = stats.watermark();
        if moves.last().is_none_or(|&(_, last)| wm > last) {
            moves.push((clock.now_ms(), wm));
        }
        std::thread::park_timeout(Duration::from_millis(1));
    }
    moves
}

/// The violations topic from its beginning: each event with the time it was
/// produced.
fn read_violations(bootstrap: &str, expected: u64) -> anyhow::Result<Vec<(i64, Value)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "vigil-bench-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(VIOLATIONS, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + CATCH_UP;
    while (out.len() as u64) < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
            && let (Some(ts), Some(payload)) = (m.timestamp().to_millis(), m.payload())
        {
            out.push((ts, serde_json::from_slice(payload)?));
        }
    }
    Ok(out)
}
