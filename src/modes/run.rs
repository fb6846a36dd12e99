//! `vigil run`: the Kafka daemon. Consumes the CDC and cache topics in one
//! consumer group, runs the engine, produces violations and dead letters,
//! serves HTTP (metrics, health, readiness), and stops cleanly on SIGINT or
//! SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::RecvTimeoutError;

use super::{ExitStatus, create_dir};
use crate::cli::RunArgs;
use crate::config::{ByteSize, Config};
use crate::http;
use crate::ingest::Ingest;
use crate::io::kafka::outputs::KafkaOutputs;
use crate::io::kafka::reach_brokers;
use crate::io::kafka::source::KafkaSource;
use crate::pipeline::{Engine, EngineOptions, RunReport};
use crate::state::{FailingStore, MemoryBudget, RocksStore, Store};
use crate::telemetry::{self, Stats};
use crate::time::{Clock, SystemClock};

/// How long a stop request waits for outputs to be acknowledged before
/// giving up (what was not committed is read again on restart).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: &RunArgs) -> anyhow::Result<ExitStatus> {
    let config = Config::load(args.config.as_deref())?;
    config.validate_for_run()?;
    reach_brokers(&config, args.broker_timeout.0)?;
    let runtime = runtime()?;
    // The recorder first: the histograms of `Stats` register with it.
    let recorder = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(telemetry::install_recorder()?)
    };
    let stats = Arc::new(Stats::default());
    let store = open_store(&config.state.path, config.state.cache_size)?;
    if let Some(recorder) = recorder {
        let listen = config
            .metrics
            .listen
            .parse()
            .expect("validated with the configuration");
        let bound = http::start(
            runtime.handle(),
            listen,
            &config.metrics,
            recorder,
            Arc::clone(&stats),
            Arc::clone(&store),
        )?;
        tracing::info!(%bound, "serving http://{bound}/metrics, /healthz, /readyz, /v1/keys/");
    }
    let control = Control::default();
    control.on_signals(runtime.handle());
    let report = serve(&config, store, stats, &control)?;
    tracing::info!(checkpoints = report.checkpoints, "stopped");
    Ok(ExitStatus::Ok)
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

/// How a running daemon is asked to stop.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Stop reading, finish the batch, flush, commit, exit.
    pub stop: Arc<AtomicBool>,
    /// Stop waiting for the broker (the shutdown took too long).
    pub give_up: Arc<AtomicBool>,
}

impl Control {
    /// Sets `stop` on SIGINT or SIGTERM, and `give_up` on a second signal or
    /// [`SHUTDOWN_TIMEOUT`] later.
    pub fn on_signals(&self, runtime: &tokio::runtime::Handle) {
        let control = self.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                tracing::error!("cannot listen for SIGTERM");
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: finishing the batch, flushing outputs, committing state");
            control.stop.store(true, Ordering::SeqCst);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = tokio::time::sleep(SHUTDOWN_TIMEOUT) => {}
            }
            tracing::warn!("giving up waiting for the broker; uncommitted records will be read again on restart");
            control.give_up.store(true, Ordering::SeqCst);
        });
    }
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

/// A stable name for this instance (transactional ids): its state directory.
pub fn instance_name(path: &Path) -> String {
    let canonical: PathBuf = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(canonical.to_string_lossy().as_bytes())
    )
}

/// Runs the pipeline on Kafka until `control.stop` is set; the building
/// block of `vigil run` and `vigil demo`.
pub fn serve(
    config: &Config,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    control: &Control,
) -> anyhow::Result<RunReport> {
    let ingest = Ingest::new(config, Arc::clone(&stats))?;
    let options = EngineOptions::from_config(config, false);
    let (tx, rx) = crossbeam_channel::bounded(options.queue_batches * 4);
    let source = KafkaSource::new(config, Arc::clone(&store), Arc::clone(&stats), tx)?;
    let outputs = KafkaOutputs::new(
        config,
        source.consumer(),
        Arc::clone(&stats),
        &instance_name(&config.state.path),
        Arc::clone(&control.give_up),
    )?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine = Engine {
        options,
        store,
        stats: Arc::clone(&stats),
        clock: Arc::clone(&clock),
        partitions: 0,
    };
    tracing::info!(
        group = %config.inputs.group_id,
        cdc = ?config.inputs.cdc_topics,
        cache = ?config.inputs.cache_topics,
        "consuming"
    );
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let report = std::thread::scope(|s| {
        s.spawn(|| source.run(&ingest, &control.stop));
        s.spawn(|| {
            while let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(Duration::from_secs(1))
            {
                telemetry::publish(&stats, clock.now_ms());
            }
        });
        let report = engine.run(rx, Box::new(outputs));
        // If the engine stopped on its own (an error), stop reading too.
        control.stop.store(true, Ordering::SeqCst);
        drop(done_tx);
        report
    });
    telemetry::publish(&stats, clock.now_ms());
    Ok(report?)
}
