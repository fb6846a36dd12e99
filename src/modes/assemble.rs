//! One way to assemble the engine, for every mode: sources on threads of
//! their own feeding the engine's channel, the engine, and its outputs.
//! Each mode says what differs (its inputs, its outputs, its state and
//! whether that state is durable, in its [`EngineOptions`]);
//! [`Assembly::run`] runs them together. [`serve`] is the Kafka assembly of
//! `vigil run`, `vigil demo` and `vigil bench`, [`serve_stage`] that of one
//! stage of two.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::create_dir;
use super::shutdown::Control;
use crate::config::{ByteSize, Config};
use crate::ingest::Ingest;
use crate::io::kafka::outputs::KafkaOutputs;
use crate::io::kafka::repartition::{KafkaRepartition, Stage};
use crate::io::kafka::source::KafkaSource;
use crate::model::Millis;
use crate::pipeline::{Engine, EngineOptions, Outputs, Repartition, RunReport, SourceMsg};
use crate::state::{FailingStore, MemoryBudget, RocksStore, Store};
use crate::telemetry::{self, Stats};
use crate::time::{Clock, SystemClock};

/// How often a live engine's metrics are published.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// A source: reads its input into the engine's channel (from
/// [`Assembly::sender`]) until the input ends or the engine hangs up.
type Source<'a> = Box<dyn FnOnce() -> anyhow::Result<()> + Send + 'a>;

/// Something to do every so often while the engine runs (progress lines,
/// metrics).
type Tick<'a> = (Duration, Box<dyn Fn() + Send + 'a>);

/// An engine with its sources, assembled by a mode.
pub struct Assembly<'a> {
    engine: Engine,
    tx: Sender<SourceMsg>,
    rx: Receiver<SourceMsg>,
    sources: Vec<Source<'a>>,
    tick: Option<Tick<'a>>,
    stop: Option<&'a AtomicBool>,
}

impl<'a> Assembly<'a> {
    /// An engine over `store` with the mode's `options`; `partitions` input
    /// partitions known at start (files; live sources announce theirs), and
    /// room for `queue` batches between the sources and the engine.
    pub fn new(
        options: EngineOptions,
        store: Arc<dyn Store>,
        stats: Arc<Stats>,
        partitions: usize,
        queue: usize,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(queue);
        Assembly {
            engine: Engine {
                options,
                store,
                stats,
                clock: Arc::new(SystemClock),
                partitions,
                repartition: None,
            },
            tx,
            rx,
            sources: Vec::new(),
            tick: None,
            stop: None,
        }
    }

    /// Stage one of two: key-level items go to `repartition` instead of
    /// the key workers.
    pub fn repartition(mut self, repartition: Box<dyn Repartition>) -> Self {
        self.engine.repartition = Some(repartition);
        self
    }

    /// Where sources send their batches.
    pub fn sender(&self) -> Sender<SourceMsg> {
        self.tx.clone()
    }

    /// Adds a source, run on a thread of its own.
    pub fn source(mut self, source: impl FnOnce() -> anyhow::Result<()> + Send + 'a) -> Self {
        self.sources.push(Box::new(source));
        self
    }

    /// Runs `tick` every `every` while the engine runs.
    pub fn every(mut self, every: Duration, tick: impl Fn() + Send + 'a) -> Self {
        self.tick = Some((every, Box::new(tick)));
        self
    }

    /// Sets `stop` when the engine stops on its own (an error), so that
    /// sources reading until told to stop stop too.
    pub fn stop_sources_with(mut self, stop: &'a AtomicBool) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Runs the sources and the engine into `outputs` until the engine
    /// stops; a source's error first (the engine's end follows from it),
    /// else the engine's.
    pub fn run(self, outputs: Box<dyn Outputs>) -> anyhow::Result<RunReport> {
        let Assembly {
            engine,
            tx,
            rx,
            sources,
            tick,
            stop,
        } = self;
        drop(tx);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let (report, read) = std::thread::scope(|s| {
            let readers: Vec<_> = sources.into_iter().map(|source| s.spawn(source)).collect();
            if let Some((every, tick)) = tick {
                s.spawn(move || {
                    while let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(every) {
                        tick();
                    }
                });
            }
            let report = engine.run(rx, outputs);
            if let Some(stop) = stop {
                stop.store(true, Ordering::SeqCst);
            }
            drop(done_tx);
            let read = readers
                .into_iter()
                .try_for_each(|h| h.join().expect("sources do not panic"));
            (report, read)
        });
        read?;
        Ok(report?)
    }
}

/// Runs the whole pipeline on Kafka until `control.stop` is set; the
/// assembly of `vigil run`, `vigil demo` and `vigil bench`.
pub fn serve(
    config: &Config,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    control: &Control,
) -> anyhow::Result<RunReport> {
    serve_stage(config, Stage::Both, store, stats, control)
}

/// Runs `stage` of the pipeline on Kafka until `control.stop` is set.
pub fn serve_stage(
    config: &Config,
    stage: Stage,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    control: &Control,
) -> anyhow::Result<RunReport> {
    let ingest = Ingest::new(config, Arc::clone(&stats))?;
    let options = stage_options(EngineOptions::from_config(config, false), stage);
    let queue = options.queue_batches * 4;
    let assembly = Assembly::new(options, Arc::clone(&store), Arc::clone(&stats), 0, queue);
    let source = KafkaSource::new(config, stage, store, Arc::clone(&stats), assembly.sender())?;
    let member = member_name(config);
    let outputs = KafkaOutputs::new(
        config,
        stage,
        source.consumer(),
        Arc::clone(&stats),
        &member,
        Arc::clone(&control.give_up),
    )?;
    let assembly = match stage {
        Stage::One => {
            let repartition = KafkaRepartition::new(config, outputs.producer(), &member)?;
            tracing::info!(
                topic = %config.inputs.repartition_topic,
                producer = %member,
                "stage one: key-level records go to the repartition topic"
            );
            assembly.repartition(Box::new(repartition))
        }
        Stage::Both | Stage::Two => assembly,
    };
    match stage {
        Stage::Two => tracing::info!(
            group = %stage.group_id(config),
            topic = %config.inputs.repartition_topic,
            "consuming"
        ),
        Stage::Both | Stage::One => tracing::info!(
            group = %config.inputs.group_id,
            cdc = ?config.inputs.cdc_topics,
            cache = ?config.inputs.cache_topics,
            "consuming"
        ),
    }
    let clock = SystemClock;
    let report = assembly
        .source(|| Ok(source.run(&ingest, &control.stop)?))
        .every(PUBLISH_EVERY, || telemetry::publish(&stats, clock.now_ms()))
        .stop_sources_with(&control.stop)
        .run(Box::new(outputs));
    telemetry::publish(&stats, clock.now_ms());
    report
}

/// The engine's settings for `stage`: stage one keeps entity state per CDC
/// partition number and detects storms, but holds no key verdicts for
/// incidents; stage two keeps key state per repartition partition, takes
/// its time from stage one's marks (the allowed lateness already taken
/// off), and sees no invalidation counts for storms.
fn stage_options(mut options: EngineOptions, stage: Stage) -> EngineOptions {
    match stage {
        Stage::Both => {}
        Stage::One => {
            options.partitioned = true;
            options.incidents = None;
        }
        Stage::Two => {
            options.partitioned = true;
            options.allowed_lateness_ms = 0;
            // Its time is stage one's marks: its partitions never idle.
            options.idle_timeout_ms = Millis::MAX;
            options.storms = None;
        }
    }
    options
}

/// This instance's name among those of its group, the same across its
/// restarts (its transactional id, and in stage one its marks' producer):
/// `group.instance.id` when set, else this machine's name and its state
/// directory's ([`instance_name`]), so that instances on several machines
/// whose state directories have the same path are told apart.
fn member_name(config: &Config) -> String {
    match config.kafka.get("group.instance.id") {
        Some(id) => id.0.clone(),
        None => format!("{}-{}", host_name(), instance_name(&config.state.path)),
    }
}

/// This machine's name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// Opens the state store, creating its directory, with its share of
/// `state.cache_size` (failing as a full disk after the number of writes
/// in `VIGIL_TORTURE_STORE_FAIL_AFTER`, which only `vigil torture` sets).
pub fn open_store(path: &Path, cache_size: ByteSize) -> anyhow::Result<Arc<dyn Store>> {
    create_dir(path, "the state directory")?;
    let store = RocksStore::open_with(path, MemoryBudget::of(cache_size.0))
        .with_context(|| format!("opening the state in {}", path.display()))?;
    Ok(FailingStore::from_env(
        Arc::new(store),
        &path.display().to_string(),
    )?)
}

/// The tokio runtime of the daemon's I/O around the pipeline: signals and
/// the HTTP server (the pipeline itself runs on threads of its own).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vigil-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")
}

/// A stable name for this instance's state directory.
pub fn instance_name(path: &Path) -> String {
    let canonical: PathBuf = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(canonical.to_string_lossy().as_bytes())
    )
}
