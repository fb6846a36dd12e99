//! `vigil torture`: proof under faults. A workload with every fault kind
//! streams through a broker (the embedded mock cluster, or `--bootstrap`)
//! while `vigil run`, a child process, is killed with SIGKILL at random
//! points and restarted, the broker is taken away once, and the state store
//! fails once as a full disk does ([`crate::state::FailingStore`]). Then
//! what the crashed runs published and the state they left are compared
//! with an uncrashed `vigil check` of the same records.
//!
//! The workload is produced as fast as vigil commits its input offsets,
//! keeping at most [`RETAINED_BYTES`] unread a partition: the embedded
//! broker keeps only about 5 MB a partition, and what vigil has not
//! committed yet must still be there when a restarted instance reads it
//! again. Every record is also written as a `kcat -J` line (with its topic,
//! partition and offset) for `vigil check`, so both runs see the same
//! records at the same positions.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{DeliveryResult, Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use serde_json::Value;

use super::{ExitStatus, UsageError, create_dir};
use crate::cli::TortureArgs;
use crate::ingest::Stream;
use crate::inspect::{StateComparison, compare_entries, verdict_entries};
use crate::io::file::kcat_line;
use crate::io::kafka::send_waiting;
use crate::state::failing::{FAIL_AFTER_ENV, INJECTED};
use crate::state::{Cf, RocksStore, Store, codec};
use crate::workload::encode::CdcFormat;
use crate::workload::rng::Rng;
use crate::workload::storms::Traffic;
use crate::workload::{FaultRates, Generator, PARTITIONS, START_MS, Spec, end_marker};

/// Fault rates of the workload: every kind, and redeliveries.
const FAULTS: FaultRates = FaultRates {
    missing: 0.02,
    late: 0.02,
    stale_fill: 0.02,
    fill_after_delete: 0.2,
    regression: 0.01,
    gap: 0.01,
    conflict: 0.01,
    duplicate: 0.03,
};

/// Bytes of records (keys and values) produced to an input partition and
/// not yet committed by vigil: well under the embedded broker's 5 MB a
/// partition, whatever its framing adds.
const RETAINED_BYTES: u64 = 2 << 20;
/// What a record's framing is counted as, besides its key and value.
const RECORD_OVERHEAD: u64 = 80;
/// One record in this many is an undecodable CDC record (a dead letter).
const GARBAGE_EVERY: u64 = 10_000;
/// How far after the workload's last record its end markers are: past every
/// deadline, late window and allowed lateness.
const END_AFTER_MS: i64 = 600_000;
/// How long vigil may go without committing anything it was given before
/// the run is declared stuck.
const STUCK: Duration = Duration::from_secs(300);
/// What `vigil run` logs once it has its partitions.
const ASSIGNED: &str = "partitions assigned";
/// The session timeout of a static member (`--group-instance-id`): long
/// enough that a restart which waits for it cannot pass for a quick one.
const STATIC_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often committed offsets are asked of the broker.
const MONITOR_EVERY: Duration = Duration::from_millis(200);

const GROUP: &str = "vigil-torture";
const VIOLATIONS: &str = "torture.violations";
const DLQ: &str = "torture.dlq";
const STORMS: &str = "torture.storms";
const INCIDENTS: &str = "torture.incidents";
const OUTPUT_PARTITIONS: i32 = 3;

pub fn run(args: &TortureArgs) -> anyhow::Result<ExitStatus> {
    if args.records == 0 {
        return Err(UsageError("--records must be at least 1".into()).into());
    }
    if args.bootstrap.is_some() && !args.outage.0.is_zero() {
        println!(
            "vigil torture: no broker outage with --bootstrap (stop and start the broker yourself)"
        );
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("vigil-torture-{}", std::process::id())),
    };
    create_dir(&dir, "the working directory")?;
    let exe = std::env::current_exe().context("finding the vigil binary")?;
    let keys = args.keys.unwrap_or((args.records / 10).max(100));
    let generator = Generator::new(Spec {
        events: args.records,
        keys,
        tables: 3,
        rate: 4_000,
        format: CdcFormat::Debezium,
        seed: args.seed,
        faults: FAULTS,
        start_ms: START_MS,
        partitions: PARTITIONS,
        traffic: Traffic::Steady,
        storms: None,
        transactions: None,
    });
    let topics = generator.topics();
    let cluster = match &args.bootstrap {
        Some(_) => None,
        None => Some(MockCluster::new(1).context("starting the embedded broker")?),
    };
    let bootstrap = match (&args.bootstrap, &cluster) {
        (Some(b), _) => b.clone(),
        (None, Some(c)) => c.bootstrap_servers(),
        (None, None) => unreachable!("the embedded broker starts without --bootstrap"),
    };
    let mut wanted: Vec<(String, i32)> = topics.iter().map(|t| (t.clone(), PARTITIONS)).collect();
    wanted.extend([
        (VIOLATIONS.to_string(), OUTPUT_PARTITIONS),
        (DLQ.to_string(), 1),
        (STORMS.to_string(), 1),
        // A broker that does not create topics on first use (tansu) would
        // refuse vigil's incidents otherwise.
        (INCIDENTS.to_string(), 1),
    ]);
    match &cluster {
        Some(c) => {
            for (topic, partitions) in &wanted {
                c.create_topic(topic, *partitions, 1)
                    .with_context(|| format!("creating topic {topic}"))?;
            }
        }
        None => create_topics(&bootstrap, &wanted)?,
    }
    let inputs = Inputs::new(&generator);
    let files = Files::new(&dir);
    std::fs::write(&files.check_config, generator.config_toml())
        .context("writing the check configuration")?;
    write_run_config(
        &generator.config_toml(),
        &bootstrap,
        args.group_instance_id.as_deref(),
        &files,
    )?;
    println!(
        "vigil torture: {} records (seed {}, {keys} keys, every fault kind, a dead letter every {GARBAGE_EVERY}), broker {bootstrap}{}, working directory {}",
        args.records,
        args.seed,
        if cluster.is_some() { " (embedded)" } else { "" },
        dir.display()
    );

    let flow = Arc::new(Flow::new(&inputs));
    let monitor = Monitor::new(&bootstrap, &inputs)?;
    if monitor.high_watermarks_nonzero()? {
        return Err(UsageError(format!(
            "the topics on {bootstrap} hold records already: use a fresh broker or delete them"
        ))
        .into());
    }
    let outputs = Arc::new(Mutex::new(Published::default()));
    let stop_reading = Arc::new(AtomicBool::new(false));

    let mut rng = Rng::new(args.seed ^ 0x0074_6f72_7475_7265);
    let plan = Plan::new(args, &mut rng);
    let mut report = Report::default();

    let outcome = std::thread::scope(|s| -> anyhow::Result<usize> {
        let feeder = {
            let flow = Arc::clone(&flow);
            let bootstrap = bootstrap.clone();
            let files = &files;
            let inputs = &inputs;
            s.spawn(move || feed(generator, &bootstrap, inputs, files, &flow))
        };
        {
            let flow = Arc::clone(&flow);
            s.spawn(move || monitor.run(&flow));
        }
        let reader = {
            let outputs = Arc::clone(&outputs);
            let stop = Arc::clone(&stop_reading);
            let bootstrap = bootstrap.clone();
            s.spawn(move || read_outputs(&bootstrap, &outputs, &stop))
        };
        let mut torturer = Torturer {
            exe: &exe,
            files: &files,
            flow: &flow,
            cluster: cluster.as_ref(),
            bootstrap: &bootstrap,
            inputs: &inputs,
            outage: args.outage.0,
            static_member: args.group_instance_id.is_some(),
            report: &mut report,
            runs: 0,
        };
        let result = torturer.torture(&plan, &mut rng);
        flow.abort_if(result.is_err());
        let fed = feeder.join().expect("the feeder does not panic");
        // The feeder is done: the monitor stops too.
        flow.abort_if(true);
        // Every published record read, then stop reading.
        let drained = match (&result, &fed) {
            (Ok(()), Ok(_)) => output_ends(&bootstrap).map(|ends| {
                wait_for(STUCK, || {
                    outputs.lock().expect("not poisoned").reached(&ends)
                })
            }),
            _ => Ok(false),
        };
        stop_reading.store(true, Ordering::SeqCst);
        reader.join().expect("the reader does not panic")?;
        let generator = fed?;
        result?;
        if !drained? {
            bail!("the published violations could not be read to their end");
        }
        Ok(generator.expected().len())
    });
    report.expected = outcome?;

    let published = std::mem::take(&mut *outputs.lock().expect("not poisoned"));
    let checked = check(&exe, &files)?;
    let lost = compare(&published, &checked, &files, &inputs, &flow, &mut report)?;
    report.print();
    if lost {
        println!(
            "verdict: LOSS (the logs of each run of vigil are in {})",
            dir.display()
        );
        return Ok(ExitStatus::Lost);
    }
    println!("verdict: no loss");
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ExitStatus::Ok)
}

/// The paths of a torture run.
struct Files {
    dir: PathBuf,
    cdc: PathBuf,
    cache: PathBuf,
    check_config: PathBuf,
    run_config: PathBuf,
    state: PathBuf,
    check_out: PathBuf,
    check_state: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Self {
        Files {
            dir: dir.to_path_buf(),
            cdc: dir.join("cdc.kcat.ndjson"),
            cache: dir.join("cache.kcat.ndjson"),
            check_config: dir.join("vigil.toml"),
            run_config: dir.join("run.toml"),
            state: dir.join("state"),
            check_out: dir.join("check"),
            check_state: dir.join("check-state"),
        }
    }

    fn log(&self, run: u32) -> PathBuf {
        self.dir.join(format!("run-{run:02}.log"))
    }
}

/// Sets `field` of `[section]` in a configuration to the text `value`,
/// adding the section if it is missing.
pub(super) fn set_text(t: &mut toml::Table, section: &str, field: &str, value: &str) {
    if let Some(table) = t
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
    {
        table.insert(field.to_string(), toml::Value::String(value.to_string()));
    }
}

/// The configuration of the `vigil run` children: the workload's, on this
/// broker, with short checkpoints and session timeout, and no partition
/// ever idle (event time alone moves the watermark; end markers end it).
fn write_run_config(
    base: &str,
    bootstrap: &str,
    group_instance_id: Option<&str>,
    files: &Files,
) -> anyhow::Result<()> {
    let mut t: toml::Table = toml::from_str(base).context("the workload's configuration")?;
    let mut set = |section: &str, field: &str, value: &str| set_text(&mut t, section, field, value);
    set("kafka", "bootstrap.servers", bootstrap);
    match group_instance_id {
        // A static member restarted takes the killed one's place at once.
        Some(id) => {
            set("kafka", "group.instance.id", id);
            let ms = STATIC_SESSION_TIMEOUT.as_millis().to_string();
            set("kafka", "session.timeout.ms", &ms);
        }
        // A killed instance leaves the group when its session times out:
        // the restarted one waits that long for its partitions.
        None => set("kafka", "session.timeout.ms", "3000"),
    }
    set("kafka", "heartbeat.interval.ms", "300");
    set("inputs", "group_id", GROUP);
    set("outputs", "violations_topic", VIOLATIONS);
    set("outputs", "dlq_topic", DLQ);
    set("outputs", "storms_topic", STORMS);
    set("outputs", "incidents_topic", INCIDENTS);
    set("state", "path", &files.state.display().to_string());
    set("state", "checkpoint_interval", "200ms");
    set("detect", "idle_timeout", "1h");
    set("metrics", "listen", "");
    std::fs::write(&files.run_config, toml::to_string(&t)?).context("writing run.toml")?;
    Ok(())
}

/// Creates the topics on an external broker (those that exist are kept).
fn create_topics(bootstrap: &str, topics: &[(String, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = quiet_client()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating the admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .context("creating the topics")?;
    for result in results {
        if let Err((topic, e)) = result
            && e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("creating topic {topic}: {e}");
        }
    }
    Ok(())
}

/// The input partitions: every partition of every topic of the workload.
struct Inputs {
    topics: Vec<String>,
    streams: Vec<Stream>,
}

impl Inputs {
    fn new(generator: &Generator) -> Self {
        let topics = generator.topics();
        let streams = topics
            .iter()
            .map(|t| generator.stream_of_topic(t).unwrap_or(Stream::Cdc))
            .collect();
        Inputs { topics, streams }
    }

    fn len(&self) -> usize {
        self.topics.len() * PARTITIONS as usize
    }

    fn index(&self, topic: &str, partition: i32) -> Option<usize> {
        let t = self.topics.iter().position(|x| x == topic)?;
        Some(t * PARTITIONS as usize + usize::try_from(partition).ok()?)
    }

    fn name(&self, index: usize) -> (&str, i32) {
        (
            &self.topics[index / PARTITIONS as usize],
            (index % PARTITIONS as usize) as i32,
        )
    }

    fn list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for i in 0..self.len() {
            let (t, p) = self.name(i);
            tpl.add_partition(t, p);
        }
        tpl
    }
}

/// What has been produced and what vigil has committed, per input
/// partition: the feeder waits on it, the monitor and the torturer update
/// and read it.
struct Flow {
    state: Mutex<FlowState>,
    changed: Condvar,
}

struct FlowState {
    /// Per partition: the bytes of its first `i` records, for each `i`.
    bytes: Vec<Vec<u64>>,
    /// Per partition: the offset after the last record vigil committed to
    /// Kafka.
    committed: Vec<i64>,
    /// Workload records produced (not counting end markers and dead
    /// letters).
    produced: u64,
    /// Every record is produced and flushed.
    done: bool,
    /// The torture failed, or the feeder is done: the feeder and the
    /// monitor stop.
    aborted: bool,
}

impl Flow {
    fn new(inputs: &Inputs) -> Self {
        Flow {
            state: Mutex::new(FlowState {
                bytes: vec![vec![0]; inputs.len()],
                committed: vec![0; inputs.len()],
                produced: 0,
                done: false,
                aborted: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlowState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn abort_if(&self, failed: bool) {
        if failed {
            self.lock().aborted = true;
            self.changed.notify_all();
        }
    }

    /// Waits until `size` more bytes fit in partition `index`; false if
    /// the torture was aborted.
    fn reserve(&self, index: usize, size: u64) -> bool {
        let mut state = self.lock();
        loop {
            if state.aborted {
                return false;
            }
            let bytes = &state.bytes[index];
            let produced = bytes.len() - 1;
            let committed = usize::try_from(state.committed[index])
                .unwrap_or(0)
                .min(produced);
            if bytes[produced] - bytes[committed] + size <= RETAINED_BYTES || produced == committed
            {
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, MONITOR_EVERY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn produced(&self, index: usize, size: u64, workload: bool) {
        let mut state = self.lock();
        let bytes = &mut state.bytes[index];
        let last = *bytes.last().unwrap_or(&0);
        bytes.push(last + size);
        if workload {
            state.produced += 1;
        }
    }

    fn committed_total(&self) -> i64 {
        self.lock().committed.iter().sum()
    }

    /// Whether vigil has committed every record produced.
    fn all_committed(&self) -> bool {
        let state = self.lock();
        state.done
            && state
                .bytes
                .iter()
                .zip(&state.committed)
                .all(|(b, c)| *c >= (b.len() - 1) as i64)
    }
}

/// Asks the broker for the consumer group's committed offsets.
///
/// A query that times out replaces the client: a long-lived client can be
/// left sending its queries on a coordinator connection that answers
/// nothing for minutes (seen with the embedded broker after a `vigil run`
/// stopped or the broker was away: its OffsetFetch requests sent, no
/// response, while `vigil run`'s own commits succeeded), and the workload,
/// produced as fast as commits are seen, then waits for nothing.
struct Monitor {
    consumer: BaseConsumer,
    bootstrap: String,
    tpl: TopicPartitionList,
}

impl Monitor {
    fn new(bootstrap: &str, inputs: &Inputs) -> anyhow::Result<Self> {
        Ok(Monitor {
            consumer: Self::connect(bootstrap).context("creating the offset monitor")?,
            bootstrap: bootstrap.to_string(),
            tpl: inputs.list(),
        })
    }

    fn connect(bootstrap: &str) -> KafkaResult<BaseConsumer> {
        quiet_client()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .create()
    }

    fn high_watermarks_nonzero(&self) -> anyhow::Result<bool> {
        for e in self.tpl.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(30))
                .with_context(|| format!("reading the end of {}", e.topic()))?;
            if high > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn committed(&self) -> KafkaResult<Vec<i64>> {
        let tpl = self
            .consumer
            .committed_offsets(self.tpl.clone(), Duration::from_secs(2))?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .collect())
    }

    /// Updates `flow` with the committed offsets until the torture ends.
    fn run(mut self, flow: &Flow) {
        loop {
            if flow.lock().aborted {
                return;
            }
            match self.committed() {
                Ok(offsets) => {
                    let mut state = flow.lock();
                    for (c, o) in state.committed.iter_mut().zip(offsets) {
                        *c = (*c).max(o);
                    }
                    drop(state);
                    flow.changed.notify_all();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the committed offsets could not be read; the monitor connects again");
                    if let Ok(consumer) = Self::connect(&self.bootstrap) {
                        self.consumer = consumer;
                    }
                }
            }
            std::thread::park_timeout(MONITOR_EVERY);
        }
    }
}

/// Counts the records the producer failed to deliver.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, "a workload record was not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One record for both the broker and the files.
struct Feed<'a> {
    topic: &'a str,
    partition: i32,
    key: Option<&'a str>,
    value: Option<&'a str>,
    ts_ms: i64,
}

/// Produces the workload (with a dead letter every [`GARBAGE_EVERY`]
/// records, and end markers after it), as fast as vigil commits, and
/// writes each record as a `kcat -J` line with its offset.
fn feed(
    mut generator: Generator,
    bootstrap: &str,
    inputs: &Inputs,
    files: &Files,
    flow: &Flow,
) -> anyhow::Result<Generator> {
    let producer: ThreadedProducer<Deliveries> = quiet_client()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        // Retries during the outage must not write a record twice: the
        // offsets of the kcat lines are those of the broker.
        .set("enable.idempotence", "true")
        .create_with_context(Deliveries::default())
        .context("creating the workload producer")?;
    let mut cdc = BufWriter::new(File::create(&files.cdc)?);
    let mut cache = BufWriter::new(File::create(&files.cache)?);
    let mut offsets = vec![0i64; inputs.len()];
    let garbage_topic = inputs.topics[0].clone();
    let mut last_ts = START_MS;
    let mut send = |r: &Feed<'_>, stream: Stream, workload: bool| -> anyhow::Result<bool> {
        let index = inputs
            .index(r.topic, r.partition)
            .context("a record of an unknown topic")?;
        let size = RECORD_OVERHEAD
            + r.key.map_or(0, |k| k.len() as u64)
            + r.value.map_or(0, |v| v.len() as u64);
        if !flow.reserve(index, size) {
            return Ok(false);
        }
        let line = kcat_line(
            r.topic,
            r.partition,
            offsets[index],
            Some(r.ts_ms),
            r.key,
            r.value,
        );
        offsets[index] += 1;
        let file = match stream {
            Stream::Cdc => &mut cdc,
            Stream::Cache => &mut cache,
        };
        writeln!(file, "{line}")?;
        let mut record: BaseRecord<'_, str, str, ()> = BaseRecord::to(r.topic)
            .partition(r.partition)
            .timestamp(r.ts_ms);
        if let Some(k) = r.key {
            record = record.key(k);
        }
        if let Some(v) = r.value {
            record = record.payload(v);
        }
        send_waiting(&producer, record).context("producing the workload")?;
        flow.produced(index, size, workload);
        Ok(true)
    };
    let mut n = 0u64;
    while let Some(record) = generator.next() {
        n += 1;
        last_ts = last_ts.max(record.ts_ms);
        let key = record.key.as_deref().map(text).transpose()?;
        let value = record.value.as_deref().map(text).transpose()?;
        let r = Feed {
            topic: &record.topic,
            partition: record.partition,
            key,
            value,
            ts_ms: record.ts_ms,
        };
        if !send(&r, record.stream, true)? {
            return Ok(generator);
        }
        if n.is_multiple_of(GARBAGE_EVERY) {
            let garbage = Feed {
                topic: &garbage_topic,
                partition: ((n / GARBAGE_EVERY) % PARTITIONS as u64) as i32,
                key: None,
                value: Some(r#"{"op":"c","after":{"id":"#),
                ts_ms: record.ts_ms,
            };
            if !send(&garbage, Stream::Cdc, false)? {
                return Ok(generator);
            }
        }
    }
    for (t, topic) in inputs.topics.iter().enumerate() {
        for partition in 0..PARTITIONS {
            let (key, value) = end_marker(inputs.streams[t], t, partition, last_ts + END_AFTER_MS);
            let r = Feed {
                topic,
                partition,
                key: key.as_deref(),
                value: Some(&value),
                ts_ms: last_ts + END_AFTER_MS,
            };
            if !send(&r, inputs.streams[t], false)? {
                return Ok(generator);
            }
        }
    }
    cdc.flush()?;
    cache.flush()?;
    producer
        .flush(Duration::from_secs(600))
        .context("flushing the workload")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} workload records were not delivered");
    }
    flow.lock().done = true;
    flow.changed.notify_all();
    Ok(generator)
}

/// A client configuration that logs errors only (the outage makes the
/// clients of this process log every failed connection otherwise).
fn quiet_client() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
    config
}

fn text(bytes: &[u8]) -> anyhow::Result<&str> {
    std::str::from_utf8(bytes).context("the workload's records are text")
}

/// The faults of a torture, each at a number of records vigil has
/// committed.
struct Plan {
    faults: Vec<(u64, Fault)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill(u32),
    Outage,
    StoreFailure,
}

impl Plan {
    fn new(args: &TortureArgs, rng: &mut Rng) -> Self {
        let n = args.records as i64;
        let mut at = |lo: f64, hi: f64| -> u64 {
            let (lo, hi) = ((n as f64 * lo) as i64, ((n as f64 * hi) as i64).max(1));
            rng.range(lo, hi.max(lo + 1)) as u64
        };
        let mut faults: Vec<(u64, Fault)> = (1..=args.kills)
            .map(|k| (at(0.02, 0.98), Fault::Kill(k)))
            .collect();
        if args.bootstrap.is_none() && !args.outage.0.is_zero() {
            faults.push((at(0.3, 0.7), Fault::Outage));
        }
        if args.store_failure {
            faults.push((at(0.2, 0.8), Fault::StoreFailure));
        }
        faults.sort();
        let mut kill = 0;
        for f in &mut faults {
            if let Fault::Kill(k) = &mut f.1 {
                kill += 1;
                *k = kill;
            }
        }
        Plan { faults }
    }

    fn kills(&self) -> usize {
        self.faults
            .iter()
            .filter(|f| matches!(f.1, Fault::Kill(_)))
            .count()
    }
}

/// A `vigil run` child.
struct Daemon {
    child: Child,
    log: PathBuf,
    /// Offsets vigil had committed, in all, when it started.
    committed_at_start: i64,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A torture that fails half-way leaves no vigil running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the plan against `vigil run` children.
struct Torturer<'a> {
    exe: &'a Path,
    files: &'a Files,
    flow: &'a Flow,
    cluster: Option<&'a MockCluster<'static, DefaultProducerContext>>,
    bootstrap: &'a str,
    inputs: &'a Inputs,
    /// How long the broker is away.
    outage: Duration,
    /// vigil runs as a static member (`--group-instance-id`).
    static_member: bool,
    report: &'a mut Report,
    runs: u32,
}

impl Torturer<'_> {
    fn torture(&mut self, plan: &Plan, rng: &mut Rng) -> anyhow::Result<()> {
        let mut daemon = self.start(None)?;
        let kills = plan.kills();
        for &(at, fault) in &plan.faults {
            self.wait_committed(at, &mut daemon)?;
            daemon = match fault {
                Fault::Kill(k) => self.kill(daemon, k, kills, rng)?,
                Fault::Outage => self.outage(daemon)?,
                Fault::StoreFailure => self.store_failure(daemon, rng)?,
            };
        }
        // The end: everything committed, then a clean stop.
        loop {
            let before = self.flow.committed_total();
            let moved = wait_for(STUCK, || {
                self.flow.all_committed() || self.flow.committed_total() > before
            });
            if self.flow.all_committed() {
                break;
            }
            if let Some(code) = self.exited(&mut daemon)? {
                self.report.fail(format!(
                    "vigil exited on its own with status {code:?} near the end"
                ));
                daemon = self.start(None)?;
                continue;
            }
            if !moved {
                bail!(
                    "vigil committed nothing for {}s before the end (log: {})",
                    STUCK.as_secs(),
                    daemon.log.display()
                );
            }
        }
        let (code, took) = self.terminate(daemon)?;
        let line = format!(
            "end: every record committed; SIGTERM: vigil stopped with status {} in {:.1}s",
            code.map_or("none".to_string(), |c| c.to_string()),
            took.as_secs_f64()
        );
        if code == Some(0) {
            self.report.line(line);
        } else {
            self.report.fail(line);
        }
        Ok(())
    }

    fn start(&mut self, fail_after: Option<u64>) -> anyhow::Result<Daemon> {
        self.runs += 1;
        let log = self.files.log(self.runs);
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(self.exe);
        cmd.args(["run", "--config"])
            .arg(&self.files.run_config)
            .env_remove(FAIL_AFTER_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(n) = fail_after {
            cmd.env(FAIL_AFTER_ENV, n.to_string());
        }
        let child = cmd.spawn().context("starting vigil run")?;
        Ok(Daemon {
            child,
            log,
            committed_at_start: self.flow.committed_total(),
        })
    }

    fn exited(&self, daemon: &mut Daemon) -> anyhow::Result<Option<Option<i32>>> {
        Ok(daemon.child.try_wait()?.map(|s| s.code()))
    }

    /// Waits until vigil has committed `at` records, restarting it if it
    /// stops on its own (a finding).
    fn wait_committed(&mut self, at: u64, daemon: &mut Daemon) -> anyhow::Result<()> {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        let (mut progress, mut since) = (self.flow.committed_total(), Instant::now());
        loop {
            let reached = wait_for(Duration::from_secs(1), || {
                self.flow.committed_total() >= at || self.flow.all_committed()
            });
            if reached {
                return Ok(());
            }
            if self.flow.committed_total() > progress {
                progress = self.flow.committed_total();
                since = Instant::now();
            } else if since.elapsed() > STUCK {
                bail!(
                    "vigil committed nothing for {}s (log: {})",
                    STUCK.as_secs(),
                    daemon.log.display()
                );
            }
            if let Some(code) = self.exited(daemon)? {
                self.report.fail(format!(
                    "vigil exited on its own with status {code:?} (log: {})",
                    daemon.log.display()
                ));
                *daemon = self.start(None)?;
            }
        }
    }

    /// Waits until vigil has its partitions and has committed something
    /// since it started; false if it did not within [`STUCK`]. (Offsets
    /// committed by the instance before it can be seen late: they alone
    /// do not prove that this one works.)
    fn working(&self, daemon: &Daemon) -> bool {
        wait_for(STUCK, || {
            std::fs::read_to_string(&daemon.log).is_ok_and(|log| log.contains(ASSIGNED))
                && (self.flow.committed_total() > daemon.committed_at_start
                    || self.flow.all_committed())
        })
    }

    fn kill(
        &mut self,
        mut daemon: Daemon,
        k: u32,
        kills: usize,
        rng: &mut Rng,
    ) -> anyhow::Result<Daemon> {
        if !self.working(&daemon) {
            bail!(
                "vigil committed nothing for {}s after it started (log: {})",
                STUCK.as_secs(),
                daemon.log.display()
            );
        }
        // A random moment within its work, not only right after a commit.
        std::thread::sleep(Duration::from_millis(rng.range(0, 400) as u64));
        let produced = self.flow.lock().produced;
        let committed = self.flow.committed_total();
        daemon.child.kill().context("killing vigil run")?;
        daemon.child.wait()?;
        let started = Instant::now();
        let next = self.start(None)?;
        let resumed = self.working(&next);
        let took = started.elapsed();
        // A static member takes its partitions back at once; waiting for
        // the killed one's session to expire is a finding.
        let waited_session = self.static_member && took >= STATIC_SESSION_TIMEOUT / 2;
        let line = format!(
            "kill {k}/{kills}: SIGKILL at {produced} records produced ({committed} offsets committed); restarted, {}{}",
            if resumed {
                format!("committing again after {:.1}s", took.as_secs_f64())
            } else {
                "never committed again".to_string()
            },
            match (self.static_member, waited_session) {
                (false, _) => String::new(),
                (true, false) => format!(
                    " (static member: within half its {}s session timeout)",
                    STATIC_SESSION_TIMEOUT.as_secs()
                ),
                (true, true) => format!(
                    " (static member: NOT within half its {}s session timeout)",
                    STATIC_SESSION_TIMEOUT.as_secs()
                ),
            }
        );
        if resumed && !waited_session {
            self.report.line(line);
        } else {
            self.report.fail(line);
        }
        Ok(next)
    }

    fn outage(&mut self, mut daemon: Daemon) -> anyhow::Result<Daemon> {
        let Some(cluster) = self.cluster else {
            return Ok(daemon);
        };
        let length = self.outage;
        if !self.working(&daemon) {
            bail!("vigil committed nothing before the outage");
        }
        let produced = self.flow.lock().produced;
        cluster.broker_down(1).context("taking the broker down")?;
        let down = Instant::now();
        // The fault lasts its length; vigil is watched meanwhile.
        let mut exited = None;
        while down.elapsed() < length {
            std::thread::sleep(Duration::from_millis(200).min(length - down.elapsed()));
            if exited.is_none() {
                exited = self.exited(&mut daemon)?;
            }
        }
        cluster.broker_up(1).context("bringing the broker back")?;
        let up = Instant::now();
        let before = self.flow.committed_total();
        if let Some(code) = exited {
            self.report.fail(format!(
                "broker outage: vigil exited with status {code:?} while the broker was away (log: {})",
                daemon.log.display()
            ));
            daemon = self.start(None)?;
        }
        let resumed = wait_for(STUCK, || {
            self.flow.committed_total() > before || self.flow.all_committed()
        });
        let line = format!(
            "broker outage: the broker away {:.1}s at {produced} records produced; vigil {}",
            length.as_secs_f64(),
            if resumed {
                format!(
                    "stayed up and committed again {:.1}s after it came back",
                    up.elapsed().as_secs_f64()
                )
            } else {
                "never committed again".to_string()
            }
        );
        if resumed && exited.is_none() {
            self.report.line(line);
        } else {
            self.report.fail(line);
        }
        Ok(daemon)
    }

    fn store_failure(&mut self, daemon: Daemon, rng: &mut Rng) -> anyhow::Result<Daemon> {
        if !self.working(&daemon) {
            bail!("vigil committed nothing before the store failure");
        }
        let (code, _) = self.terminate(daemon)?;
        if code != Some(0) {
            self.report
                .fail(format!("SIGTERM before the store failure: status {code:?}"));
        }
        let writes = rng.range(3, 12) as u64;
        let produced = self.flow.lock().produced;
        let mut failing = self.start(Some(writes))?;
        let exited = wait_for(STUCK, || matches!(failing.child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = failing.child.kill();
            let _ = failing.child.wait();
            self.report.fail(format!(
                "store failure after {writes} writes: vigil did not stop (log: {})",
                failing.log.display()
            ));
            return self.start(None);
        }
        let code = failing.child.wait()?.code();
        let log = std::fs::read_to_string(&failing.log).unwrap_or_default();
        let error = log
            .lines()
            .rev()
            .find(|l| l.starts_with("vigil: error:"))
            .unwrap_or("(no error line)")
            .to_string();
        let clear = error.contains("No space left on device") && error.contains(INJECTED);
        let ahead = self.offsets_ahead_of_state()?;
        let line = format!(
            "store failure: the store full after {writes} writes at {produced} records produced; vigil exited with status {}: {error:?}; {}",
            code.map_or("none".to_string(), |c| c.to_string()),
            if ahead.is_empty() {
                format!(
                    "Kafka offsets not past the state's on all {} input partitions",
                    self.inputs.len()
                )
            } else {
                format!("Kafka offsets past the state's: {}", ahead.join(", "))
            }
        );
        if code == Some(4) && clear && ahead.is_empty() {
            self.report.line(line);
        } else {
            self.report.fail(line);
        }
        self.start(None)
    }

    /// The input partitions whose offset committed to Kafka is past the
    /// one the state holds.
    fn offsets_ahead_of_state(&self) -> anyhow::Result<Vec<String>> {
        let state = state_offsets(&self.files.state)?;
        let monitor = Monitor::new(self.bootstrap, self.inputs)?;
        let kafka = monitor
            .committed()
            .context("reading the committed offsets")?;
        Ok(kafka
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                let (topic, partition) = self.inputs.name(i);
                let held = state
                    .get(&(topic.to_string(), partition))
                    .copied()
                    .unwrap_or(0);
                (*k > held).then(|| format!("{topic}[{partition}] {k} > {held}"))
            })
            .collect())
    }

    /// SIGTERM (once vigil listens for it), and the exit status and how
    /// long the stop took.
    fn terminate(&self, mut daemon: Daemon) -> anyhow::Result<(Option<i32>, Duration)> {
        let listens = wait_for(STUCK, || {
            std::fs::read_to_string(&daemon.log).is_ok_and(|log| log.contains("consuming"))
                || matches!(daemon.child.try_wait(), Ok(Some(_)))
        });
        if !listens {
            bail!(
                "vigil did not start consuming (log: {})",
                daemon.log.display()
            );
        }
        let started = Instant::now();
        let pid = libc::pid_t::try_from(daemon.child.id()).context("a process id")?;
        // SAFETY: kill(2) on the id of a child this process started and has
        // not waited for yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = daemon.child.wait()?;
        Ok((status.code(), started.elapsed()))
    }
}

/// Waits until `ready` holds, checking every 50 ms, for at most `timeout`.
fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// The input positions a state directory holds: next offset by topic and
/// partition.
fn state_offsets(path: &Path) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let store = RocksStore::open_read_only(path)?;
    let mut offsets = BTreeMap::new();
    store.scan(Cf::Offsets, &[], &mut |k, v| {
        if let (Some((topic, partition)), Some(next)) =
            (codec::parse_offset_key(k), codec::parse_offset_value(v))
        {
            offsets.insert((topic.to_string(), partition), next);
        }
        true
    })?;
    Ok(offsets)
}

/// What vigil published, as read from its output topics.
#[derive(Default)]
struct Published {
    /// Violations by id.
    violations: BTreeMap<String, Value>,
    /// Copies of an id beyond the first.
    duplicates: u64,
    /// Copies of an id whose event differs from the first.
    differing_copies: Vec<String>,
    /// Dead letters by the input position they name.
    dead_letters: BTreeSet<(String, i32, i64)>,
    /// Per output topic and partition: the next offset to read.
    next: BTreeMap<(String, i32), i64>,
    /// Offsets skipped (records the broker dropped before they were read).
    gaps: Vec<String>,
}

impl Published {
    fn reached(&self, ends: &BTreeMap<(String, i32), i64>) -> bool {
        ends.iter()
            .all(|(tp, end)| self.next.get(tp).copied().unwrap_or(0) >= *end)
    }

    fn add(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let tp = (m.topic().to_string(), m.partition());
        let next = self.next.entry(tp.clone()).or_insert(0);
        if m.offset() != *next {
            self.gaps
                .push(format!("{}[{}] {}..{}", tp.0, tp.1, next, m.offset()));
        }
        *next = m.offset() + 1;
        if tp.0 == DLQ {
            let header = |name: &str| -> Option<String> {
                m.headers()?
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            if let (Some(t), Some(p), Some(o)) = (
                header("__connect.errors.topic"),
                header("__connect.errors.partition").and_then(|p| p.parse().ok()),
                header("__connect.errors.offset").and_then(|o| o.parse().ok()),
            ) {
                self.dead_letters.insert((t, p, o));
            }
            return;
        }
        let Some(event) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            self.differing_copies
                .push(format!("{}[{}]@{}: not JSON", tp.0, tp.1, m.offset()));
            return;
        };
        let id = event["id"].as_str().unwrap_or_default().to_string();
        match self.violations.get(&id) {
            Some(seen) => {
                self.duplicates += 1;
                if *seen != event {
                    self.differing_copies.push(id);
                }
            }
            None => {
                self.violations.insert(id, event);
            }
        }
    }
}

/// The end offsets of the output topics.
fn output_ends(bootstrap: &str) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let consumer: BaseConsumer = quiet_client()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut ends = BTreeMap::new();
    for (topic, partitions) in [(VIOLATIONS, OUTPUT_PARTITIONS), (DLQ, 1)] {
        for p in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .with_context(|| format!("reading the end of {topic}"))?;
            ends.insert((topic.to_string(), p), high);
        }
    }
    Ok(ends)
}

/// Reads the violations and dead letters topics from their start as they
/// are written (the embedded broker keeps only their last megabytes).
fn read_outputs(
    bootstrap: &str,
    outputs: &Mutex<Published>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = quiet_client()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "vigil-torture-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .create()
        .context("creating the output reader")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..OUTPUT_PARTITIONS {
        tpl.add_partition_offset(VIOLATIONS, p, Offset::Beginning)?;
    }
    tpl.add_partition_offset(DLQ, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => outputs.lock().expect("not poisoned").add(&m),
            Some(Err(e)) => tracing::debug!(error = %e, "reading the outputs"),
            None => {}
        }
    }
    Ok(())
}

/// What the uncrashed `vigil check` reported.
struct Checked {
    violations: BTreeMap<String, Value>,
    dead_letters: BTreeSet<(String, i32, i64)>,
}

fn check(exe: &Path, files: &Files) -> anyhow::Result<Checked> {
    let _ = std::fs::remove_dir_all(&files.check_state);
    let output = Command::new(exe)
        .args(["check", "--quiet", "--config"])
        .arg(&files.check_config)
        .arg("--cdc")
        .arg(&files.cdc)
        .arg("--cache")
        .arg(&files.cache)
        .arg("--out")
        .arg(&files.check_out)
        .arg("--state")
        .arg(&files.check_state)
        .env_remove(FAIL_AFTER_ENV)
        .output()
        .context("running vigil check")?;
    if !output.status.success() {
        bail!(
            "vigil check failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let lines = |name: &str| -> anyhow::Result<Vec<Value>> {
        let path = files.check_out.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).context("a line of vigil check's output"))
            .collect()
    };
    let violations = lines("violations.ndjson")?
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap_or_default().to_string(), v))
        .collect();
    let dead_letters = lines("dlq.ndjson")?
        .into_iter()
        .filter_map(|d| {
            Some((
                d["topic"].as_str()?.to_string(),
                i32::try_from(d["partition"].as_i64()?).ok()?,
                d["offset"].as_i64()?,
            ))
        })
        .collect();
    Ok(Checked {
        violations,
        dead_letters,
    })
}

/// Compares what the tortured runs published and left in their state with
/// the uncrashed check; says whether anything was lost, added or differs.
fn compare(
    published: &Published,
    checked: &Checked,
    files: &Files,
    inputs: &Inputs,
    flow: &Flow,
    report: &mut Report,
) -> anyhow::Result<bool> {
    let missing: Vec<&String> = checked
        .violations
        .keys()
        .filter(|id| !published.violations.contains_key(*id))
        .collect();
    let extra: Vec<&String> = published
        .violations
        .keys()
        .filter(|id| !checked.violations.contains_key(*id))
        .collect();
    let changed: Vec<&String> = checked
        .violations
        .iter()
        .filter(|(id, v)| {
            published
                .violations
                .get(*id)
                .is_some_and(|p| p["data"] != v["data"])
        })
        .map(|(id, _)| id)
        .collect();
    let line = format!(
        "violations: {} reported by the uncrashed check (the generator expected {}), {} published: {} missing, {} extra, {} with other contents; {} duplicates, {} of them different",
        checked.violations.len(),
        report.expected,
        published.violations.len(),
        missing.len(),
        extra.len(),
        changed.len(),
        published.duplicates,
        published.differing_copies.len(),
    );
    let ok = missing.is_empty()
        && extra.is_empty()
        && changed.is_empty()
        && published.differing_copies.is_empty()
        && checked.violations.len() == report.expected;
    report.result(ok, line);
    for (what, ids) in [
        ("missing", &missing),
        ("extra", &extra),
        ("changed", &changed),
    ] {
        for id in ids.iter().take(3) {
            let v = checked
                .violations
                .get(*id)
                .or_else(|| published.violations.get(*id));
            report.line(format!(
                "  {what}: {id} {}",
                v.map(|v| v["data"].to_string()).unwrap_or_default()
            ));
        }
    }
    let dead_ok = published.dead_letters == checked.dead_letters;
    report.result(
        dead_ok,
        format!(
            "dead letters: {} from the uncrashed check, {} distinct published, {}",
            checked.dead_letters.len(),
            published.dead_letters.len(),
            if dead_ok {
                "the same records"
            } else {
                "they differ"
            }
        ),
    );
    report.result(
        published.gaps.is_empty(),
        format!(
            "outputs read: {} (records the broker dropped before they were read: {:?})",
            if published.gaps.is_empty() {
                "every record"
            } else {
                "with gaps"
            },
            published.gaps
        ),
    );
    // Input positions: every record of every partition.
    let offsets = state_offsets(&files.state)?;
    let positions_ok = {
        let state = flow.lock();
        (0..inputs.len()).all(|i| {
            let (t, p) = inputs.name(i);
            offsets.get(&(t.to_string(), p)).copied() == Some((state.bytes[i].len() - 1) as i64)
        })
    };
    report.result(
        positions_ok,
        format!(
            "input positions in the state: {}",
            if positions_ok {
                "the end of every input partition"
            } else {
                "not at the end of every input partition"
            }
        ),
    );
    let StateComparison {
        compared,
        differing,
        twice,
    } = compare_states(&files.state, &files.check_state)?;
    let state_ok = differing.is_empty();
    if !state_ok {
        let path = files.dir.join("state-differences.txt");
        std::fs::write(&path, differing.join("\n\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    report.result(
        state_ok,
        format!(
            "final state: {compared} entries of entities, keys, timers and wildcards compared with the uncrashed check's, {} differ{}; {twice} keys hold an invalidation read again after a crash twice",
            differing.len(),
            if state_ok {
                String::new()
            } else {
                format!(" (listed in {})", files.dir.join("state-differences.txt").display())
            }
        ),
    );
    Ok(!report.failures.is_empty())
}

/// Compares two states entry by entry in the families that hold verdicts'
/// state.
fn compare_states(run: &Path, check: &Path) -> anyhow::Result<StateComparison> {
    let (a, b) = (
        RocksStore::open_read_only(run)?,
        RocksStore::open_read_only(check)?,
    );
    let (left, right) = (
        verdict_entries(&a, |_| true)?,
        verdict_entries(&b, |_| true)?,
    );
    Ok(compare_entries(&left, "tortured run", &right))
}

/// The lines of a torture run, and whether any says something was lost.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
    /// Violations the generator expects.
    expected: usize,
}

impl Report {
    fn line(&mut self, line: String) {
        println!("{line}");
        self.lines.push(line);
    }

    fn fail(&mut self, line: String) {
        let line = format!("{line}  <- FAILED");
        println!("{line}");
        self.failures.push(line.clone());
        self.lines.push(line);
    }

    fn result(&mut self, ok: bool, line: String) {
        if ok { self.line(line) } else { self.fail(line) }
    }

    fn print(&self) {
        if !self.failures.is_empty() {
            println!("{} of the lines above FAILED", self.failures.len());
        }
    }
}
