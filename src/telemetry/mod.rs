//! What vigil counts, exports and logs, one module per job:
//!
//! - `internal_events`: the named events ([`Event`]): each place that
//!   counts something emits one (`stats.emit(DeadLettered(reason))`), which
//!   adds to its counts and writes its log line, if it has one; and the
//!   catalogue of every metric with its HELP text and the events that feed
//!   it;
//! - `registry`: [`Stats`], the counts of a run that the events add to;
//! - `summary`: the summary of a run built from those counts, as `vigil
//!   check` prints it;
//! - `exporter`: the Prometheus recorder and the copy of the counts into
//!   it ([`publish`], once a second, off the per-record path);
//! - `histogram`: the invalidation-lag histogram the summary reads;
//! - `process`: peak resident memory and CPU time of the process;
//! - `logging`: logs on stderr.
//!
//! No metric is labelled by a cache key or any other unbounded value:
//! tables are bounded by the configuration, topics and partitions by the
//! subscription, unmapped table names by [`MAX_UNMAPPED_NAMES`].

mod exporter;
mod histogram;
mod internal_events;
mod logging;
mod process;
mod registry;
mod summary;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use exporter::{RecorderError, install_recorder, publish};
pub use histogram::{Histogram, LAG_BUCKETS_MS};
pub use internal_events::{
    BatchProcessed, CacheRedelivered, ChangeDecoded, CheckpointCommitted, DeadLettered,
    DuplicateChange, Event, FillDecoded, IncidentReported, IncidentsOpen, InvalidatedInTime,
    InvalidationDecoded, KeyHistoryEvicted, LateRecords, LateTransactionVerdicts, MissedExpired,
    OutputSchemaUnregistered, PartitionsMeasured, ProducerQueueMeasured, RecordSkipped,
    RecordsRead, RegistryUnavailable, StageTimed, StateEvicted, StateMeasured, StormReported,
    StormsMeasured, TablesDecided, TransactionsTracked, UnmappedChange, ViolationReported,
    WatermarkAdvanced, names,
};
pub use logging::init_logging;
pub use process::{
    child_cpu_seconds, peak_rss_bytes, process_cpu_seconds, thread_cpu_seconds, threads_cpu_seconds,
};
pub use registry::{MAX_UNMAPPED_NAMES, Progress, Stage, StateSize, Stats, TableTally};
pub use summary::{LagSummary, StatsSnapshot};

fn bump(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
