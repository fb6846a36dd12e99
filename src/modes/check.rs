//! `vigil check`: files in, files out, a JSON summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::assemble::Assembly;
use super::{ExitStatus, UsageError, create_dir};
use crate::cli::CheckArgs;
use crate::config::Config;
use crate::ingest::{Ingest, Stream};
use crate::io::file::{Alignment, FileInput, FileOutputs, ReadOptions, check_inputs, read_file};
use crate::pipeline::EngineOptions;
use crate::state::{MemoryBudget, RocksStore, ScratchStore, Store};
use crate::telemetry::{Stats, StatsSnapshot};

/// How often progress is printed on long runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The scratch store of a run without `--state`, in the output directory.
const SCRATCH_DIR: &str = ".vigil-check-state";

/// The summary printed on stdout.
#[derive(Debug, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    pub violations_total: u64,
    pub dead_letters_total: u64,
    pub elapsed_seconds: f64,
    pub events_per_second: f64,
    /// CPU time of the whole process, user plus system, in seconds (Linux
    /// `getrusage(RUSAGE_SELF)`: every thread, start-up and shutdown
    /// included), if known.
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` per record read, in microseconds.
    pub cpu_us_per_record: Option<f64>,
    /// Peak resident memory of the process (Linux), in bytes.
    pub peak_rss_bytes: Option<u64>,
    pub outputs: OutputPaths,
}

#[derive(Debug, Serialize)]
pub struct OutputPaths {
    pub violations: PathBuf,
    pub dlq: PathBuf,
    /// The state directory, when kept (`--state`).
    pub state: Option<PathBuf>,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitStatus> {
    let config = Config::load(args.config.as_deref())?;
    let inputs = inputs(args)?;
    create_dir(&args.out, "output directory")?;
    let summary = check(
        &config,
        &inputs,
        &args.out,
        args.state.as_deref(),
        args.quiet,
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    let found = summary.violations_total > 0;
    Ok(if found && args.fail_on_violation {
        ExitStatus::Violations
    } else {
        ExitStatus::Ok
    })
}

fn inputs(args: &CheckArgs) -> Result<Vec<FileInput>, UsageError> {
    let all: Vec<FileInput> = args
        .cdc
        .iter()
        .map(|p| (p, Stream::Cdc))
        .chain(args.cache.iter().map(|p| (p, Stream::Cache)))
        .map(|(path, stream)| FileInput {
            path: path.clone(),
            stream,
        })
        .collect();
    if all.is_empty() {
        return Err(UsageError(
            "no input: give at least one --cdc or --cache file".into(),
        ));
    }
    check_inputs(all.iter().map(|input| input.path.as_path()))
        .map_err(|e| UsageError(e.to_string()))?;
    Ok(all)
}

/// Runs the engine over the inputs; the building block of `vigil check`,
/// also used by tests and benchmarks. With a `state` directory, state is
/// kept there (RocksDB, written at every checkpoint, resumed from); without,
/// it lives in memory for the run and is not encoded, except what leaves
/// memory beyond `state.cache_size`: that goes to a scratch store in
/// `out/.vigil-check-state` ([`ScratchStore`], created only then), removed
/// at the end. `out` must exist ([`run`] creates it).
pub fn check(
    config: &Config,
    inputs: &[FileInput],
    out: &Path,
    state: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<Summary> {
    config.validate_for_files("vigil check")?;
    let started = Instant::now();
    let memory = MemoryBudget::of(config.state.cache_size.0);
    let scratch = out.join(SCRATCH_DIR);
    let store: Arc<dyn Store> = match state {
        Some(dir) => Arc::new(RocksStore::open_with(dir, memory)?),
        None => {
            remove_scratch(&scratch)?;
            Arc::new(ScratchStore::new(scratch.clone(), memory))
        }
    };
    let stats = Arc::new(Stats::default());
    let ingest = Ingest::new(config, Arc::clone(&stats))?;
    let options = EngineOptions {
        durable: state.is_some(),
        exits_after: true,
        ..EngineOptions::from_config(config, true)
    };
    let outputs = FileOutputs::create(out, &config.outputs.source)?;
    let alignment = Alignment::new(inputs.len());
    let read_opts = ReadOptions {
        ingest: &ingest,
        stats: &stats,
        max_record_bytes: usize::try_from(config.inputs.max_record_bytes.0).unwrap_or(usize::MAX),
        batch_size: options.batch_size,
        alignment: &alignment,
    };
    let queue = options.queue_batches * inputs.len();
    let mut assembly = Assembly::new(options, store, Arc::clone(&stats), inputs.len(), queue);
    for (i, input) in inputs.iter().enumerate() {
        let tx = assembly.sender();
        let read_opts = &read_opts;
        assembly = assembly.source(move || Ok(read_file(input, i, read_opts, &tx)?));
    }
    if !quiet {
        let stats = &stats;
        assembly = assembly.every(PROGRESS_EVERY, move || progress(stats, started));
    }
    assembly.run(Box::new(outputs))?;
    if state.is_none() {
        remove_scratch(&scratch)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let snapshot = stats.snapshot();
    let records = stats.records_total();
    let cpu_seconds = crate::telemetry::process_cpu_seconds();
    Ok(Summary {
        violations_total: stats.violations_total(),
        dead_letters_total: stats.dead_letters_total(),
        elapsed_seconds: elapsed,
        peak_rss_bytes: crate::telemetry::peak_rss_bytes(),
        events_per_second: if elapsed > 0.0 {
            records as f64 / elapsed
        } else {
            0.0
        },
        cpu_seconds,
        cpu_us_per_record: cpu_seconds
            .filter(|_| records > 0)
            .map(|s| s * 1e6 / records as f64),
        outputs: OutputPaths {
            violations: out.join("violations.ndjson"),
            dlq: out.join("dlq.ndjson"),
            state: state.map(Path::to_path_buf),
        },
        stats: snapshot,
    })
}

/// Removes the scratch store of an earlier run, if any.
fn remove_scratch(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the scratch state {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Prints a progress line on stderr.
fn progress(stats: &Stats, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let records = stats.records_total();
    let state = stats.state_size();
    eprintln!(
        "vigil check: {secs:.0}s, {records} records read ({:.0}/s), {} violations, {} dead letters, {} keys and {} entities in memory (about {} MiB with their timers and globs)",
        records as f64 / secs,
        stats.violations_total(),
        stats.dead_letters_total(),
        state.keys,
        state.entities,
        state.bytes >> 20
    );
}
