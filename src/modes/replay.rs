//! `vigil replay`: reads a dead-letter queue (a topic, or a file of `kcat -J`
//! lines or of `vigil check`'s `dlq.ndjson`) up to where it ended when the
//! replay started, and sends each record through the detection engine as if
//! it had arrived on its original topic (its events into files with
//! `--to files`, to the output topics as `vigil run` publishes them with
//! `--to pipeline`), back to that topic (`--to original`), or nowhere
//! (`--dry-run`). With `--to pipeline --stage one` the replay is a producer
//! of stage one of a running two-stage deployment: its entity checks run in
//! its own state, its key-level items go to the repartition topic for the
//! running stage two to judge, without watermark marks ([`ItemsOnly`]).
//!
//! Progress is kept so that a replay stopped half-way continues where it
//! stopped: with the engine's state and positions in RocksDB through the
//! engine (one atomic write, after the outputs are flushed or acknowledged,
//! so no record is applied twice), in a progress file written once the
//! broker has acknowledged a batch for `--to original`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Sender;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

use super::assemble::Assembly;
use super::{ExitStatus, UsageError, create_dir};
use crate::cli::{ReplayArgs, ReplayStage, ReplayTarget};
use crate::config::Config;
use crate::dead_letter::KafkaRecord;
use crate::events::ViolationKind;
use crate::ingest::{Ingest, Payload, RawInput, Record};
use crate::io::file::{FileOutputs, check_inputs, input_name, is_stdin, open_input};
use crate::io::kafka::outputs::KafkaOutputs;
use crate::io::kafka::repartition::KafkaRepartition;
use crate::io::kafka::{KafkaSetupError, TopicKinds, client_config, reach_brokers, send_waiting};
use crate::model::{Millis, Name, Provenance};
use crate::pipeline::{
    EngineOptions, KeyedItem, OutputError, Outputs, PartitionBatch, Position, Repartition,
    SourceMsg,
};
use crate::replay::{self, Tally};
use crate::state::{Cf, Store, codec};
use crate::telemetry::Stats;

/// Records sent to the engine, or republished, per batch.
const BATCH: usize = 1_000;
/// How often progress is printed when stderr is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One DLQ record and its position in the DLQ.
struct DlqRecord {
    partition: i32,
    offset: i64,
    record: Result<KafkaRecord, crate::dead_letter::RecordError>,
}

pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitStatus> {
    let config = Config::load(args.config.as_deref())?;
    let reasons: BTreeSet<String> = args.filter_reason.iter().cloned().collect();
    let source = match (&args.from_topic, &args.from_file) {
        (Some(t), None) => Source::Topic(t.clone()),
        (None, Some(f)) => Source::File(f.clone()),
        _ => {
            return Err(
                UsageError("give exactly one of --from-topic and --from-file".into()).into(),
            );
        }
    };
    if args.from_offset.is_some() && args.since.is_some() {
        return Err(UsageError("give at most one of --from-offset and --since".into()).into());
    }
    if args.stage == ReplayStage::One && args.to != ReplayTarget::Pipeline {
        return Err(UsageError(
            "--stage one is for --to pipeline: it publishes to the repartition topic of a running stage two".into(),
        )
        .into());
    }
    let kinds = TopicKinds::from_config(&config.inputs).map_err(|e| UsageError(e.to_string()))?;
    let started = Instant::now();
    let mut tally = Tally::default();
    let name = source.name();
    let destination = if args.dry_run {
        "dry-run"
    } else {
        match args.to {
            ReplayTarget::Files => "files",
            ReplayTarget::Pipeline => "pipeline",
            ReplayTarget::Original => "original",
        }
    };
    let stats = Arc::new(Stats::default());
    let mut extra = serde_json::Map::new();
    if args.dry_run {
        let ingest = Ingest::new(&config, Arc::clone(&stats))?;
        let mut records = source.open(&config, args, &BTreeMap::new(), &mut tally)?;
        let mut decoded = Vec::new();
        let mut progress = Progress::new(records.total());
        while let Some(r) = records.next_record()? {
            decode(&r, &kinds, &ingest, &reasons, &mut tally, &mut decoded);
            decoded.clear();
            progress.tick(tally.read);
        }
    } else if args.to == ReplayTarget::Original {
        let progress_file = args
            .progress
            .clone()
            .unwrap_or_else(|| default_progress_file(&config, &name));
        let resume = read_progress(&progress_file)?;
        let mut records = source.open(&config, args, &resume, &mut tally)?;
        republish(
            &mut *records,
            &config,
            args,
            &reasons,
            &progress_file,
            resume,
            &mut tally,
        )?;
        extra.insert("progress_file".into(), json!(progress_file));
    } else {
        check_destination(&config, args)?;
        let state = args.state.clone().unwrap_or_else(|| match args.stage {
            ReplayStage::Both => config.state.path.clone(),
            // Beside the running stage one's state, which it holds.
            ReplayStage::One => config.state.path.join("replay").join("stage-one"),
        });
        let store = super::assemble::open_store(&state, config.state.cache_size)?;
        let (outputs, repartition) = engine_outputs(&config, args, &state, &stats, &mut extra)?;
        let resume = stored_positions(&*store, &name)?;
        let mut records = source.open(&config, args, &resume, &mut tally)?;
        let partitions = records.partitions();
        let ingest = Ingest::new(&config, Arc::clone(&stats))?;
        let mut options = EngineOptions::from_config(&config, true);
        if repartition.is_some() {
            // The key verdicts incidents are made of are stage two's.
            options.incidents = None;
        }
        let assembly = Assembly::new(options, store, Arc::clone(&stats), partitions.len(), 8);
        let assembly = match repartition {
            Some(repartition) => assembly.repartition(repartition),
            None => assembly,
        };
        let tx = assembly.sender();
        let name = Name::new(&name);
        let (records, tally) = (&mut *records, &mut tally);
        let (partitions, name, kinds, ingest, reasons) =
            (&partitions, &name, &kinds, &ingest, &reasons);
        assembly
            .source(move || {
                feed(
                    records, partitions, name, kinds, ingest, reasons, args.rate, tally, &tx,
                )
            })
            .run(outputs)?;
        let violations: BTreeMap<&str, u64> = ViolationKind::ALL
            .iter()
            .map(|k| (k.as_str(), stats.violations_of(*k)))
            .filter(|(_, n)| *n > 0)
            .collect();
        extra.insert("violations".into(), json!(violations));
        extra.insert("state".into(), json!(state));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut summary = serde_json::to_value(&tally)?;
    let obj = summary.as_object_mut().expect("the tally is an object");
    obj.insert("source".into(), json!(name));
    obj.insert("destination".into(), json!(destination));
    obj.insert("elapsed_seconds".into(), json!(elapsed));
    obj.insert(
        "records_per_second".into(),
        json!(if elapsed > 0.0 {
            tally.read as f64 / elapsed
        } else {
            0.0
        }),
    );
    obj.extend(extra);
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(
        if tally.still_failing_total() > 0 || tally.skipped_by_loop_guard > 0 {
            ExitStatus::StillFailing
        } else {
            ExitStatus::Ok
        },
    )
}

/// Checks, before anything is opened, what the engine's destination needs:
/// `--out` for `--to files`; for `--to pipeline`, the settings of `vigil
/// run` (and of two stages with `--stage one`) and a broker that answers.
fn check_destination(config: &Config, args: &ReplayArgs) -> anyhow::Result<()> {
    match (args.to, &args.out) {
        (ReplayTarget::Files, None) => {
            Err(UsageError("--to files writes its events into --out DIR: give one".into()).into())
        }
        (ReplayTarget::Files, Some(_)) => Ok(config.validate_for_files("vigil replay --to files")?),
        (_, Some(_)) => Err(UsageError(
            "--out is for --to files: --to pipeline publishes to the output topics of the configuration".into(),
        )
        .into()),
        (_, None) => {
            config.validate_for_run().map_err(|e| {
                UsageError(format!("--to pipeline publishes to Kafka as vigil run does: {e}"))
            })?;
            if args.stage == ReplayStage::One {
                // The replay reads the DLQ by assignment, in no group: the
                // assignor of stage one's group does not concern it.
                config.validate_for_stages(false).map_err(|e| {
                    UsageError(format!(
                        "--stage one replays into a running two-stage deployment: {e}"
                    ))
                })?;
            }
            reach_brokers(config, args.broker_timeout.0)
                .context("publishing to the output topics")
        }
    }
}

/// Where the engine's events go, and its key-level items with `--stage one`.
type EngineOutputs = (Box<dyn Outputs>, Option<Box<dyn Repartition>>);

/// The engine's outputs: files in `--out`, or the output topics as `vigil
/// run` writes them (the replay of the state in `state`), and with
/// `--stage one` the repartition topic through the same producer, so that
/// each checkpoint has its items acknowledged too; where they go is added
/// to the summary.
fn engine_outputs(
    config: &Config,
    args: &ReplayArgs,
    state: &Path,
    stats: &Arc<Stats>,
    summary: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<EngineOutputs> {
    Ok(match &args.out {
        Some(out) => {
            create_dir(out, "output directory")?;
            summary.insert("out".into(), json!(out));
            (
                Box::new(FileOutputs::create(out, &config.outputs.source)?),
                None,
            )
        }
        None => {
            let o = &config.outputs;
            let mut topics = json!({
                "violations": o.violations_topic,
                "storms": o.storms_topic,
                "incidents": o.incidents_topic,
            });
            let instance = format!("replay-{}", super::assemble::instance_name(state));
            let outputs = KafkaOutputs::for_replay(config, Arc::clone(stats), &instance)?;
            let repartition: Option<Box<dyn Repartition>> = match args.stage {
                ReplayStage::Both => None,
                ReplayStage::One => {
                    topics["repartition"] = json!(config.inputs.repartition_topic);
                    let items = KafkaRepartition::new(config, outputs.producer(), &instance)
                        .map_err(|e| match e {
                            KafkaSetupError::NoRepartitionTopic { .. } => anyhow::Error::new(
                                UsageError(format!("--stage one needs a running stage two: {e}")),
                            ),
                            e => anyhow::Error::new(e),
                        })?;
                    Some(Box::new(ItemsOnly(items)))
                }
            };
            summary.insert("topics".into(), topics);
            (Box::new(outputs), repartition)
        }
    })
}

/// The repartition topic as a replay publishes to it: the key-level items,
/// never a watermark mark. A replay's records are old: its mark would be
/// the least of stage two's producers and hold back stage two's watermark,
/// and every live verdict with it, for as long as the replay runs (and its
/// end-of-input mark is no event time at all). Without marks, stage two
/// applies the items at its own watermark like any others (they are not
/// counted as late records): a change whose deadline has passed is judged
/// at once against the invalidations its keys kept (`detect.history`), as
/// `vigil check` judges it with the record in its input from the start; one
/// still within its deadline waits for it. (The fills after it are judged
/// again at once too, on the replayed changes of their key read so far.)
struct ItemsOnly(KafkaRepartition);

impl Repartition for ItemsOnly {
    fn publish(&mut self, items: &[KeyedItem], _mark: Option<Millis>) -> Result<(), OutputError> {
        self.0.publish(items, None)
    }
}

/// Where the DLQ is read from.
enum Source {
    Topic(String),
    File(PathBuf),
}

impl Source {
    /// The name positions are kept under.
    fn name(&self) -> String {
        match self {
            Source::Topic(t) => format!("replay:{t}"),
            Source::File(f) => format!("replay:{}", input_name(f)),
        }
    }

    /// Opens the DLQ at the resume positions (or the start asked for), and
    /// counts the records a stopped replay did already in `tally`.
    fn open(
        &self,
        config: &Config,
        args: &ReplayArgs,
        resume: &BTreeMap<i32, i64>,
        tally: &mut Tally,
    ) -> anyhow::Result<Box<dyn DlqReader>> {
        Ok(match self {
            Source::File(path) => {
                let asked = args.from_offset.unwrap_or(1);
                let start = resume.get(&0).copied().unwrap_or(asked);
                tally.resumed_past = (start - asked).max(0) as u64;
                Box::new(FileReader::open(path, start)?)
            }
            Source::Topic(topic) => {
                Box::new(TopicReader::open(config, topic, args, resume, tally)?)
            }
        })
    }
}

/// A DLQ being read, up to where it ended when the replay started.
trait DlqReader: Send {
    fn next_record(&mut self) -> anyhow::Result<Option<DlqRecord>>;
    /// The DLQ's partitions (a file is partition 0).
    fn partitions(&self) -> Vec<i32>;
    /// Records to read, when known.
    fn total(&self) -> Option<u64>;
}

/// A file: a record a line, offsets are line numbers (from 1).
struct FileReader {
    reader: BufReader<Box<dyn Read + Send>>,
    text: String,
    line: i64,
    from: i64,
    /// Bytes read, and where to stop: a regular file's length when the
    /// replay started; the end of a stream (standard input, a pipe).
    read: u64,
    end: u64,
}

impl FileReader {
    fn open(path: &Path, from: i64) -> anyhow::Result<Self> {
        check_inputs([path]).map_err(|e| UsageError(e.to_string()))?;
        let end = match std::fs::metadata(path) {
            Ok(m) if m.is_file() && !is_stdin(path) => m.len(),
            _ => u64::MAX,
        };
        let file = open_input(path)
            .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
        Ok(FileReader {
            reader: BufReader::new(file),
            text: String::new(),
            line: 0,
            from,
            read: 0,
            end,
        })
    }
}

impl DlqReader for FileReader {
    fn next_record(&mut self) -> anyhow::Result<Option<DlqRecord>> {
        while self.read < self.end {
            self.text.clear();
            let n = self.reader.read_line(&mut self.text)?;
            if n == 0 {
                break;
            }
            self.read += n as u64;
            self.line += 1;
            if self.line < self.from || self.text.trim().is_empty() {
                continue;
            }
            return Ok(Some(DlqRecord {
                partition: 0,
                offset: self.line,
                record: replay::dlq_file_record(self.text.trim_end(), self.line as u64),
            }));
        }
        Ok(None)
    }

    fn partitions(&self) -> Vec<i32> {
        vec![0]
    }

    fn total(&self) -> Option<u64> {
        None
    }
}

/// A topic, every partition from its start position to its end offset at
/// the start of the replay.
struct TopicReader {
    consumer: BaseConsumer,
    /// Per partition, the offset to stop before.
    ends: BTreeMap<i32, i64>,
    /// Per partition, the next offset to read.
    next: BTreeMap<i32, i64>,
    total: u64,
}

impl TopicReader {
    fn open(
        config: &Config,
        topic: &str,
        args: &ReplayArgs,
        resume: &BTreeMap<i32, i64>,
        tally: &mut Tally,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = client_config(
            config,
            &[
                ("group.id", "vigil-replay"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
        )
        .create()
        .context("creating the DLQ consumer")?;
        let metadata = consumer
            .fetch_metadata(Some(topic), args.broker_timeout.0)
            .with_context(|| format!("reading the partitions of {topic}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(UsageError(format!("the DLQ topic {topic} does not exist")).into());
        }
        let since = match &args.since {
            Some(text) => {
                let ms = crate::formats::parse_rfc3339(text)
                    .or_else(|| text.parse().ok())
                    .ok_or_else(|| {
                        UsageError(format!(
                            "--since {text}: give an RFC 3339 time or epoch milliseconds"
                        ))
                    })?;
                let mut tpl = TopicPartitionList::new();
                for &p in &partitions {
                    tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
                }
                Some(consumer.offsets_for_times(tpl, args.broker_timeout.0)?)
            }
            None => None,
        };
        let (mut ends, mut next) = (BTreeMap::new(), BTreeMap::new());
        let mut tpl = TopicPartitionList::new();
        let mut total = 0;
        for &p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, args.broker_timeout.0)
                .with_context(|| format!("reading the end of {topic} [{p}]"))?;
            let asked = match &since {
                Some(found) => match found.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => high,
                },
                None => args.from_offset.unwrap_or(low),
            };
            let start = resume.get(&p).copied().unwrap_or(asked).max(low);
            tally.resumed_past += (start - asked.max(low)).max(0) as u64;
            ends.insert(p, high);
            next.insert(p, start);
            total += (high - start).max(0) as u64;
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        }
        consumer.assign(&tpl).context("reading the DLQ topic")?;
        Ok(TopicReader {
            consumer,
            ends,
            next,
            total,
        })
    }
}

impl DlqReader for TopicReader {
    fn next_record(&mut self) -> anyhow::Result<Option<DlqRecord>> {
        loop {
            if self.next.iter().all(|(p, n)| *n >= self.ends[p]) {
                return Ok(None);
            }
            let Some(message) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the DLQ topic; retrying");
                    continue;
                }
            };
            let (p, offset) = (m.partition(), m.offset());
            if offset >= self.ends.get(&p).copied().unwrap_or(0) {
                continue;
            }
            self.next.insert(p, offset + 1);
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Some(DlqRecord {
                partition: p,
                offset,
                record: Ok(KafkaRecord {
                    topic: m.topic().to_string(),
                    partition: p,
                    offset,
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp_ms: m.timestamp().to_millis(),
                }),
            }));
        }
    }

    fn partitions(&self) -> Vec<i32> {
        self.ends.keys().copied().collect()
    }

    fn total(&self) -> Option<u64> {
        Some(self.total)
    }
}

/// A DLQ record counted as read, with its origin, if it is readable and
/// selected by `--filter-reason` (otherwise counted as failing or filtered).
fn select<'r>(
    r: &'r DlqRecord,
    reasons: &BTreeSet<String>,
    tally: &mut Tally,
) -> Option<(&'r KafkaRecord, replay::Origin, String)> {
    tally.read += 1;
    let position = format!("{}:{}", r.partition, r.offset);
    let record = match &r.record {
        Ok(record) => record,
        Err(e) => {
            tally.fail(e.reason.as_str(), position);
            return None;
        }
    };
    let origin = match replay::origin(&record.headers) {
        Ok(o) => o,
        Err(e) => {
            tally.fail(e.code(), position);
            return None;
        }
    };
    if !reasons.is_empty() && !origin.reason.as_ref().is_some_and(|r| reasons.contains(r)) {
        tally.filtered += 1;
        return None;
    }
    Some((record, origin, position))
}

/// Decodes one DLQ record as if it had arrived on its original topic,
/// counting what happened; the decoded records go to `out`.
fn decode(
    r: &DlqRecord,
    kinds: &TopicKinds,
    ingest: &Ingest,
    reasons: &BTreeSet<String>,
    tally: &mut Tally,
    out: &mut Vec<Record>,
) {
    let Some((record, origin, position)) = select(r, reasons, tally) else {
        return;
    };
    let Some(stream) = kinds.stream_of(&origin.topic) else {
        tally.fail("unknown_topic", position);
        return;
    };
    let provenance = Provenance {
        topic: Name::new(&origin.topic),
        partition: origin.partition,
        offset: origin.offset,
        from_file: false,
    };
    let input = RawInput {
        stream,
        key: record.key.as_deref(),
        value: record.value.as_deref().map(Payload::Bytes),
        timestamp_ms: origin.timestamp_ms.or(record.timestamp_ms),
    };
    match ingest.ingest(input, &provenance, out) {
        Ok(()) => tally.replayed += 1,
        Err(e) => tally.fail(e.reason.as_str(), position),
    }
}

/// Reads the DLQ into the engine, a batch per DLQ partition at a time, each
/// with its position so the engine commits progress with the state.
#[allow(clippy::too_many_arguments)]
fn feed(
    records: &mut dyn DlqReader,
    partitions: &[i32],
    name: &Name,
    kinds: &TopicKinds,
    ingest: &Ingest,
    reasons: &BTreeSet<String>,
    rate: Option<u64>,
    tally: &mut Tally,
    tx: &Sender<SourceMsg>,
) -> anyhow::Result<()> {
    let index: BTreeMap<i32, usize> = partitions
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, i))
        .collect();
    let mut pending: BTreeMap<i32, (Vec<Record>, i64)> = BTreeMap::new();
    let mut pace = Pace::new(rate);
    let mut progress = Progress::new(records.total());
    let send = |p: i32, batch: (Vec<Record>, i64)| {
        tx.send(SourceMsg::Batch(vec![PartitionBatch {
            partition: index[&p],
            records: batch.0,
            dead: Vec::new(),
            position: Some(Position {
                source: name.clone(),
                partition: p,
                next_offset: batch.1,
                event_time: None,
            }),
            keyed: None,
        }]))
        .is_ok()
    };
    while let Some(r) = records.next_record()? {
        pace.wait(tally.read);
        let entry = pending.entry(r.partition).or_default();
        decode(&r, kinds, ingest, reasons, tally, &mut entry.0);
        entry.1 = r.offset + 1;
        progress.tick(tally.read);
        if entry.0.len() >= BATCH {
            let batch = std::mem::take(entry);
            if !send(r.partition, batch) {
                return Ok(());
            }
        }
    }
    for (p, batch) in std::mem::take(&mut pending) {
        if batch.1 > 0 && !send(p, batch) {
            return Ok(());
        }
    }
    let _ = tx.send(SourceMsg::End {
        partitions: (0..partitions.len()).collect(),
    });
    Ok(())
}

/// Republishes DLQ records to their original topics, saving progress once
/// each batch is acknowledged.
fn republish(
    records: &mut dyn DlqReader,
    config: &Config,
    args: &ReplayArgs,
    reasons: &BTreeSet<String>,
    progress_file: &Path,
    mut done: BTreeMap<i32, i64>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> =
        client_config(config, &[("enable.idempotence", "true")])
            .create()
            .context("creating the producer")?;
    let mut pace = Pace::new(args.rate);
    let mut progress = Progress::new(records.total());
    let mut in_batch = 0;
    let flush = |done: &BTreeMap<i32, i64>| -> anyhow::Result<()> {
        producer
            .flush(args.broker_timeout.0)
            .context("waiting for the broker to acknowledge republished records")?;
        write_progress(progress_file, done)
    };
    while let Some(r) = records.next_record()? {
        pace.wait(tally.read);
        done.insert(r.partition, r.offset + 1);
        let selected = select(&r, reasons, tally);
        progress.tick(tally.read);
        let Some((record, origin, _)) = selected else {
            continue;
        };
        if origin.replays >= args.max_replays {
            tally.skipped_by_loop_guard += 1;
            continue;
        }
        let mut headers = OwnedHeaders::new();
        for (k, v) in replay::republished_headers(&record.headers, origin.replays + 1) {
            headers = headers.insert(Header {
                key: &k,
                value: v.as_deref(),
            });
        }
        let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&origin.topic)
            .partition(origin.partition)
            .headers(headers);
        if let Some(k) = &record.key {
            out = out.key(k.as_slice());
        }
        if let Some(v) = &record.value {
            out = out.payload(v.as_slice());
        }
        if let Some(ts) = origin.timestamp_ms.or(record.timestamp_ms) {
            out = out.timestamp(ts);
        }
        send_waiting(&producer, out)
            .with_context(|| format!("republishing to {}", origin.topic))?;
        tally.replayed += 1;
        in_batch += 1;
        if in_batch >= BATCH {
            flush(&done)?;
            in_batch = 0;
        }
    }
    flush(&done)
}

/// The positions a `--to files` or `--to pipeline` replay of this DLQ committed with its
/// state, by DLQ partition.
fn stored_positions(store: &dyn Store, name: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut prefix = name.as_bytes().to_vec();
    prefix.push(0);
    let mut out = BTreeMap::new();
    store.scan(Cf::Offsets, &prefix, &mut |key, value| {
        if let (Some((source, p)), Some(next)) = (
            codec::parse_offset_key(key),
            codec::parse_offset_value(value),
        ) && source == name
        {
            out.insert(p, next);
        }
        true
    })?;
    if !out.is_empty() {
        tracing::info!(positions = ?out, "resuming a replay where it stopped");
    }
    Ok(out)
}

fn default_progress_file(config: &Config, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    config
        .state
        .path
        .join("replay")
        .join(format!("{safe}.json"))
}

fn read_progress(path: &Path) -> anyhow::Result<BTreeMap<i32, i64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let v: BTreeMap<i32, i64> = serde_json::from_str(&text)
                .with_context(|| format!("reading the replay progress in {}", path.display()))?;
            tracing::info!(positions = ?v, file = %path.display(), "resuming a replay where it stopped");
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes progress atomically (a new file renamed over the old one).
fn write_progress(path: &Path, done: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string(done)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Keeps a replay at `--rate` records a second.
struct Pace {
    rate: Option<u64>,
    started: Instant,
}

impl Pace {
    fn new(rate: Option<u64>) -> Self {
        Pace {
            rate: rate.filter(|r| *r > 0),
            started: Instant::now(),
        }
    }

    fn wait(&mut self, done: u64) {
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
}

/// A progress bar on a terminal, a line every few seconds otherwise.
struct Progress {
    total: Option<u64>,
    terminal: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        Progress {
            total,
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, done: u64) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            PROGRESS_EVERY
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let of = self.total.map_or(String::new(), |t| format!("/{t}"));
        if self.terminal {
            let bar = match self.total {
                Some(t) if t > 0 => {
                    let filled = (done.min(t) * 30 / t) as usize;
                    format!("[{}{}] ", "#".repeat(filled), " ".repeat(30 - filled))
                }
                _ => String::new(),
            };
            eprint!("\r{bar}{done}{of} records, {rate:.0}/s ");
        } else {
            eprintln!("vigil replay: {done}{of} records, {rate:.0}/s");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.terminal {
            eprintln!();
        }
    }
}
