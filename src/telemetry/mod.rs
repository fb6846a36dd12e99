//! What vigil counts. [`Stats`] is the one place where every counted event is
//! counted: stages add to it per batch, `vigil check` prints it as its
//! summary, and [`publish`] hands it to the Prometheus exporter (metric
//! names in [`names`]). No metric is labelled by a cache key or any other
//! unbounded value: tables are bounded by the configuration, topics and
//! partitions by the subscription, unmapped table names by
//! [`MAX_UNMAPPED_NAMES`].

mod events;
mod exporter;
mod histogram;
mod logging;
mod process;
mod registry;
mod summary;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use events::names;
pub use exporter::{RecorderError, install_recorder, publish};
pub use histogram::{Histogram, LAG_BUCKETS_MS};
pub use logging::init_logging;
pub use process::{peak_rss_bytes, process_cpu_seconds, thread_cpu_seconds};
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
