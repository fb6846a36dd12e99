//! The Prometheus recorder that `/metrics` renders, and the copy of the
//! counts into it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use super::histogram::LAG_BUCKETS_MS;
use super::internal_events::{Kind, METRICS, names};
use super::registry::Stats;
use super::{lock, read};
use crate::dead_letter::Reason;
use crate::detect::storm::{Phase, ScopeType};
use crate::events::ViolationKind;

/// How long a gauge that is no longer set keeps its series: gauges are set
/// every second, so one left alone belongs to something gone (a released
/// partition).
const GAUGE_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Prometheus recorder: {0}")]
pub struct RecorderError(#[from] BuildError);

/// Installs the Prometheus recorder that `/metrics` renders, and describes
/// every metric. Call it before creating [`Stats`], whose histograms
/// register with it.
pub fn install_recorder() -> Result<PrometheusHandle, RecorderError> {
    let lag_buckets: Vec<f64> = LAG_BUCKETS_MS
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect();
    let handle = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .set_buckets_for_metric(Matcher::Full(names::INVALIDATION_LAG.into()), &lag_buckets)?
        .set_buckets_for_metric(
            Matcher::Full(names::BATCH_SECONDS.into()),
            &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Gives every metric its HELP text.
fn describe() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Publishes the counters and gauges of `stats` to the installed recorder
/// (a no-op without one). Called every second by `vigil run`.
pub fn publish(stats: &Stats, now_ms: i64) {
    use metrics::{counter, gauge};
    let s = stats.snapshot();
    for (topic, n) in &s.records_read {
        counter!(names::RECORDS_CONSUMED, "topic" => topic.clone()).absolute(*n);
    }
    for (op, n) in &s.changes_by_op {
        counter!(names::CHANGES, "op" => *op).absolute(*n);
    }
    counter!(names::CACHE_EVENTS, "action" => "invalidate").absolute(s.invalidations);
    counter!(names::CACHE_EVENTS, "action" => "fill").absolute(s.fills);
    counter!(names::DUPLICATES).absolute(s.duplicates);
    for (kind, n) in &s.skipped {
        counter!(names::SKIPPED, "kind" => *kind).absolute(*n);
    }
    counter!(names::UNMAPPED).absolute(s.unmapped.values().sum());
    for reason in Reason::ALL {
        counter!(names::DEAD_LETTERS, "reason" => reason.as_str())
            .absolute(stats.dead_letters_of(reason));
    }
    for kind in ViolationKind::ALL {
        counter!(names::VIOLATIONS, "kind" => kind.as_str()).absolute(stats.violations_of(kind));
    }
    counter!(names::LATE_RECORDS).absolute(s.late_records);
    counter!(names::LATE_TX_VERDICTS).absolute(read(&stats.late_tx_verdicts));
    counter!(names::REGISTRY_WAITS).absolute(stats.registry_waits());
    for t in ScopeType::ALL {
        let i = t as usize;
        let scope_type = t.as_str();
        counter!(names::STORMS_STARTED, "scope_type" => scope_type)
            .absolute(stats.storm_events_of(t, Phase::Started));
        gauge!(names::INVALIDATION_RATE, "scope_type" => scope_type)
            .set(read(&stats.storm_rates[i]) as f64);
        gauge!(names::ACTIVE_STORMS, "scope_type" => scope_type)
            .set(read(&stats.active_storms[i]) as f64);
    }
    counter!(names::CHECKPOINTS).absolute(read(&stats.checkpoints));
    let open = lock(&stats.open_incidents).clone();
    for (table, tally) in &s.tables {
        counter!(names::DECIDED, "table" => table.clone()).absolute(tally.decided);
        counter!(names::IN_TIME, "table" => table.clone()).absolute(tally.in_time);
    }
    // Every table decided on has its series (0 without an incident), so
    // that an alert sees it fall back to 0.
    for table in s.tables.keys().chain(&open) {
        gauge!(names::OPEN_INCIDENTS, "table" => table.clone())
            .set(f64::from(u8::from(open.contains(table))));
    }
    let wm = stats.watermark();
    if wm > i64::MIN && wm < i64::MAX {
        gauge!(names::WATERMARK).set(wm as f64 / 1000.0);
        gauge!(names::WATERMARK_DELAY).set((now_ms - wm) as f64 / 1000.0);
    }
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let size = stats.state_size();
    gauge!(names::STATE_SIZE, "kind" => "cache_key").set(size.keys as f64);
    gauge!(names::STATE_SIZE, "kind" => "entity").set(size.entities as f64);
    gauge!(names::STATE_MEMORY).set(size.bytes as f64);
    counter!(names::STATE_EVICTIONS).absolute(read(&stats.state_evictions));
    counter!(names::TRANSACTIONS_DROPPED).absolute(s.transactions_dropped);
    gauge!(names::OPEN_TRANSACTIONS).set(read(&stats.open_transactions) as f64);
    gauge!(names::PRODUCER_QUEUE).set(stats.producer_queue.load(Ordering::Relaxed) as f64);
    for ((topic, partition), lag) in lock(&stats.consumer_lag).iter() {
        gauge!(names::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
            .set(*lag as f64);
    }
}
