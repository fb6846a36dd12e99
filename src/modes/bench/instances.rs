//! `vigil bench --instances`: the scaling curve of two stages. The same
//! workload, its cache topic keyed by service (not co-partitioned), goes
//! through the embedded broker to one `vigil run --stage both` process,
//! then, for each N asked, to one `--stage one` process and N `--stage two`
//! processes, each a fresh broker. Each configuration must report exactly
//! the workload's expected violations; it is measured by records per
//! second (first record produced to last violation produced) and by the
//! CPU time of its processes per record, whose excess over the one process
//! is the cost of the repartition.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, Producer};
use serde::Serialize;
use serde_json::Value;

use super::{CATCH_UP, DLQ, VIOLATIONS, producer, read_violations, spec, wait_until};
use crate::ingest::Stream;
use crate::modes::produce_generated;
use crate::modes::torture::set_text;
use crate::telemetry::child_cpu_seconds;
use crate::time::{Clock, SystemClock};
use crate::workload::{self, GenRecord, Generator, end_marker};

/// Partitions of the input topics: those of `vigil gen`, which the end
/// markers are numbered for.
const INPUT_PARTITIONS: i32 = workload::PARTITIONS;
/// Partitions of the repartition topic and of the changelogs: enough for
/// the largest number of stage-two processes asked.
const REPARTITION_PARTITIONS: i32 = 12;
/// The embedded broker keeps about 5 MB a partition; a workload must fit
/// in less, as it is produced faster than vigil reads it.
const MAX_PARTITION_BYTES: u64 = 4 << 20;
/// What a process logs once it has its partitions.
const ASSIGNED: &str = "partitions assigned";
/// End markers come this long after the workload's last record.
const END_AFTER_MS: i64 = 600_000;
/// How long a process may take to stop after SIGTERM.
const STOPPING: Duration = Duration::from_secs(60);

/// One configuration of processes over the workload.
#[derive(Debug, Serialize)]
pub(super) struct InstancesRun {
    /// `both` (one process), or `two_stages`.
    layout: &'static str,
    /// Processes of stage two (1 for `both`).
    instances: u32,
    processes: u32,
    records_per_second: f64,
    elapsed_seconds: f64,
    /// CPU time of all its processes (user + system) per record.
    cpu_us_per_record: f64,
    /// `cpu_us_per_record` less that of the one process: the repartition's
    /// cost (publishing, a second decoding, the watermark marks, a second
    /// consumer group).
    repartition_overhead_us_per_record: Option<f64>,
    violations: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct InstancesFigures {
    events: u64,
    keys: u64,
    /// Workload records produced (end markers aside).
    records: u64,
    expected_violations: u64,
    runs: Vec<InstancesRun>,
}

/// Runs the scaling measure for each number of stage-two processes in
/// `instances`, after the one-process baseline.
pub(super) fn bench_instances(
    work: &Path,
    instances: &[u32],
    events: u64,
    keys: u64,
) -> anyhow::Result<InstancesFigures> {
    let clock = SystemClock;
    let mut generator = Generator::new(spec(
        events,
        keys,
        1_000_000,
        clock.now_ms(),
        INPUT_PARTITIONS,
    ));
    let records: Vec<GenRecord> = generator
        .by_ref()
        .map(keyed_by_service)
        .collect::<anyhow::Result<_>>()?;
    fits_the_broker(&records)?;
    let expected = generator.expected().len() as u64;
    let base = generator.config_toml();
    let topics = generator.topics();
    let streams: Vec<Stream> = (topics.iter())
        .map(|t| generator.stream_of_topic(t).unwrap_or(Stream::Cdc))
        .collect();
    let workload = Workload {
        records: &records,
        topics: &topics,
        streams: &streams,
        base: &base,
        expected,
    };
    eprintln!(
        "vigil bench: scaling out, {} records, cache topic keyed by service, {expected} violations expected",
        records.len()
    );
    let mut runs = vec![workload.measure(work, None)?];
    for &n in instances {
        runs.push(workload.measure(work, Some(n))?);
    }
    let baseline = runs[0].cpu_us_per_record;
    for run in &mut runs[1..] {
        run.repartition_overhead_us_per_record = Some(run.cpu_us_per_record - baseline);
    }
    print_table(&runs);
    Ok(InstancesFigures {
        events,
        keys,
        records: records.len() as u64,
        expected_violations: expected,
        runs,
    })
}

fn print_table(runs: &[InstancesRun]) {
    eprintln!("vigil bench: scaling out (CPU is of all the processes of a configuration)");
    eprintln!(
        "  {:<22} {:>9} {:>12} {:>10} {:>14} {:>18}",
        "configuration", "processes", "records/s", "seconds", "CPU µs/record", "overhead µs/record"
    );
    for r in runs {
        let name = match r.layout {
            "both" => "1 x --stage both".to_string(),
            _ => format!("1 one + {} two", r.instances),
        };
        let overhead = r
            .repartition_overhead_us_per_record
            .map_or("-".to_string(), |o| format!("{o:+.2}"));
        eprintln!(
            "  {name:<22} {:>9} {:>12.0} {:>10.1} {:>14.2} {overhead:>18}",
            r.processes, r.records_per_second, r.elapsed_seconds, r.cpu_us_per_record
        );
    }
}

/// A cache record keyed, and partitioned, by its service, as services
/// commonly publish their invalidations; other records as generated.
fn keyed_by_service(mut record: GenRecord) -> anyhow::Result<GenRecord> {
    if record.stream != Stream::Cache {
        return Ok(record);
    }
    let value = record
        .value
        .as_deref()
        .context("a cache event has a value")?;
    let event: Value = serde_json::from_slice(value).context("a generated cache event")?;
    let service = event["source_service"]
        .as_str()
        .context("a generated cache event names its service")?;
    let hash = crate::hash::entity("service", service);
    record.partition = (hash % INPUT_PARTITIONS as u64) as i32;
    record.key = Some(service.as_bytes().to_vec());
    Ok(record)
}

/// Refuses a workload that the embedded broker would not keep whole.
fn fits_the_broker(records: &[GenRecord]) -> anyhow::Result<()> {
    let mut bytes: HashMap<(&str, i32), u64> = HashMap::new();
    for r in records {
        let size = r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len);
        *bytes.entry((&r.topic, r.partition)).or_default() += size as u64;
    }
    if let Some(((topic, partition), size)) = bytes.into_iter().max_by_key(|(_, b)| *b)
        && size > MAX_PARTITION_BYTES
    {
        bail!(
            "--instances: partition {partition} of {topic} would hold {} MB, more than the \
             embedded broker keeps ({} MB); ask for fewer --kafka-events",
            size >> 20,
            MAX_PARTITION_BYTES >> 20
        );
    }
    Ok(())
}

struct Workload<'a> {
    records: &'a [GenRecord],
    topics: &'a [String],
    streams: &'a [Stream],
    base: &'a str,
    expected: u64,
}

/// A `vigil run` child, killed if the measure fails half-way.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn start(config: &Path, stage: &str, log: PathBuf) -> anyhow::Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args(["run", "--config"])
            .arg(config)
            .args(["--stage", stage])
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting vigil run")?;
        let process = Process { child, log };
        if !wait_until(CATCH_UP, || process.log_has(ASSIGNED) || process.exited()) {
            bail!("vigil run --stage {stage} was given no partitions");
        }
        if process.exited() {
            bail!(
                "vigil run --stage {stage} stopped: {}",
                std::fs::read_to_string(&process.log).unwrap_or_default()
            );
        }
        Ok(process)
    }

    fn log_has(&self, text: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(text))
    }

    fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .map_or(true, |s| s.contains(") Z "))
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        child_cpu_seconds(self.child.id()).context("the CPU time of a vigil run process")
    }

    /// SIGTERM, and the exit status must be 0.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("a process id")?;
        // SAFETY: kill(2) on the id of a child this process started and has
        // not waited for yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if !wait_until(STOPPING, || self.exited()) {
            bail!("vigil run did not stop within {STOPPING:?} of SIGTERM");
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "vigil run stopped with {status}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Workload<'_> {
    /// One configuration on a fresh broker: `None` is one `--stage both`
    /// process, `Some(n)` one `--stage one` and `n` `--stage two`.
    fn measure(&self, work: &Path, instances: Option<u32>) -> anyhow::Result<InstancesRun> {
        let name = instances.map_or("both".to_string(), |n| format!("two-stages-{n}"));
        let dir = work.join(format!("instances-{name}"));
        std::fs::create_dir_all(&dir)?;
        let cluster: MockCluster<'static, DefaultProducerContext> =
            MockCluster::new(1).context("starting the embedded broker")?;
        for topic in self.topics {
            cluster.create_topic(topic, INPUT_PARTITIONS, 1)?;
        }
        for topic in [
            "vigil.repartition",
            "vigil.changelog",
            "vigil.repartition.changelog",
        ] {
            cluster.create_topic(topic, REPARTITION_PARTITIONS, 1)?;
        }
        cluster.create_topic(VIOLATIONS, super::PARTITIONS, 1)?;
        cluster.create_topic(DLQ, 1, 1)?;
        let bootstrap = cluster.bootstrap_servers();

        let mut processes = Vec::new();
        let mut start = |stage: &str, i: u32| -> anyhow::Result<()> {
            let config = dir.join(format!("{stage}-{i}.toml"));
            self.write_config(&config, &bootstrap, &dir.join(format!("state-{stage}-{i}")))?;
            let log = dir.join(format!("{stage}-{i}.log"));
            processes.push(Process::start(&config, stage, log)?);
            Ok(())
        };
        match instances {
            None => start("both", 0)?,
            Some(n) => {
                // Stage two first, so that its group has settled when the
                // records come.
                for i in 0..n {
                    start("two", i)?;
                }
                start("one", 0)?;
            }
        }
        eprintln!(
            "vigil bench: scaling out, {}: {} processes",
            name,
            processes.len()
        );
        let cpu_before = processes
            .iter()
            .map(Process::cpu_seconds)
            .sum::<anyhow::Result<f64>>()?;
        let started_ms = SystemClock.now_ms();
        self.produce(&bootstrap)?;
        let violations = read_violations(&bootstrap, self.expected)?;
        let cpu = processes
            .iter()
            .map(Process::cpu_seconds)
            .sum::<anyhow::Result<f64>>()?
            - cpu_before;
        let last_ms = violations
            .iter()
            .map(|(ts, _)| *ts)
            .max()
            .unwrap_or(started_ms);
        for process in processes {
            process.stop()?;
        }
        let reported = topic_size(&bootstrap, VIOLATIONS, super::PARTITIONS)?;
        if reported != self.expected {
            bail!(
                "--instances, {name}: vigil run reported {reported} violations where {} were expected",
                self.expected
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        let records = self.records.len() as f64;
        let elapsed = (last_ms - started_ms).max(1) as f64 / 1e3;
        let run = InstancesRun {
            layout: if instances.is_some() {
                "two_stages"
            } else {
                "both"
            },
            instances: instances.unwrap_or(1),
            processes: instances.map_or(1, |n| n + 1),
            records_per_second: records / elapsed,
            elapsed_seconds: elapsed,
            cpu_us_per_record: cpu * 1e6 / records,
            repartition_overhead_us_per_record: None,
            violations: reported,
        };
        eprintln!(
            "vigil bench: scaling out, {name}: {:.0} records/s, CPU {:.2} µs a record",
            run.records_per_second, run.cpu_us_per_record
        );
        Ok(run)
    }

    /// The workload's configuration on this broker; no partition is ever
    /// idle (event time alone moves the watermarks; end markers end it).
    fn write_config(&self, path: &Path, bootstrap: &str, state: &Path) -> anyhow::Result<()> {
        let mut t: toml::Table =
            toml::from_str(self.base).context("the workload's configuration")?;
        let mut set =
            |section: &str, field: &str, value: &str| set_text(&mut t, section, field, value);
        set("kafka", "bootstrap.servers", bootstrap);
        // See `Bench::new`: the embedded broker answers an empty fetch only
        // when its wait runs out.
        set("kafka", "fetch.wait.max.ms", "5");
        set("inputs", "group_id", "vigil-bench");
        set("outputs", "violations_topic", VIOLATIONS);
        set("outputs", "dlq_topic", DLQ);
        set("state", "path", &state.display().to_string());
        set("detect", "idle_timeout", "1h");
        set("metrics", "listen", "");
        std::fs::write(path, toml::to_string(&t)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Every record, then an end marker on every input partition.
    fn produce(&self, bootstrap: &str) -> anyhow::Result<()> {
        let producer = producer(bootstrap, DefaultProducerContext)?;
        for r in self.records {
            produce_generated(&producer, r, r.ts_ms, ())?;
        }
        let end_ms = self.records.iter().map(|r| r.ts_ms).max().unwrap_or(0) + END_AFTER_MS;
        for (t, (topic, stream)) in self.topics.iter().zip(self.streams).enumerate() {
            for partition in 0..INPUT_PARTITIONS {
                let (key, value) = end_marker(*stream, t, partition, end_ms);
                let marker = GenRecord {
                    stream: *stream,
                    topic: topic.as_str().into(),
                    partition,
                    key: key.map(String::into_bytes),
                    value: Some(value.into_bytes()),
                    ts_ms: end_ms,
                };
                produce_generated(&producer, &marker, end_ms, ())?;
            }
        }
        producer.flush(CATCH_UP).context("flushing the workload")
    }
}

/// Records in `topic` (its partitions' end offsets, summed).
fn topic_size(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(30))?;
        total += (high - low).max(0) as u64;
    }
    Ok(total)
}
