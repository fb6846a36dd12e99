//! The subcommands. Each mode wires sources, the engine and outputs for one
//! way of using vigil, and returns how the process should exit.

pub mod assemble;
pub mod bench;
pub mod check;
pub mod demo;
pub mod docs;
pub mod generate;
pub mod inspect;
pub mod replay;
pub mod run;
pub mod shutdown;
pub mod torture;

use anyhow::Context;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};

use crate::io::kafka::send_waiting;
use crate::workload::GenRecord;

/// How a mode ended, as the process exit status (documented in `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It ran.
    Ok,
    /// Violations were found and the user asked to fail on them.
    Violations,
    /// Some replayed records still fail.
    StillFailing,
    /// `vigil torture` found a violation lost, added or changed, or state
    /// that differs.
    Lost,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Ok => 0,
            ExitStatus::Violations => 1,
            ExitStatus::StillFailing => 3,
            ExitStatus::Lost => 5,
        }
    }
}

/// Exit status of usage and configuration errors.
pub const USAGE_EXIT: u8 = 2;
/// Exit status of runtime failures (I/O, state store).
pub const FAILURE_EXIT: u8 = 4;
/// Exit status of `vigil run` fenced out of its consumer group by another
/// instance with the same `group.instance.id`.
pub const FENCED_EXIT: u8 = 6;

/// A mistake in how vigil was called (a missing input file...): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Produces a generated record stamped `ts_ms`, with `opaque` for its
/// delivery report, waiting while librdkafka's queue is full (the workloads
/// of `vigil demo` and `vigil bench`).
fn produce_generated<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    r: &GenRecord,
    ts_ms: i64,
    opaque: C::DeliveryOpaque,
) -> anyhow::Result<()> {
    let mut record: BaseRecord<'_, [u8], [u8], _> = BaseRecord::with_opaque_to(&r.topic, opaque)
        .partition(r.partition)
        .timestamp(ts_ms);
    if let Some(k) = &r.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &r.value {
        record = record.payload(v.as_slice());
    }
    send_waiting(producer, record).context("producing the workload")
}

/// Creates a directory the user named (`what` says which), or says why not.
pub fn create_dir(path: &std::path::Path, what: &str) -> Result<(), UsageError> {
    std::fs::create_dir_all(path)
        .map_err(|e| UsageError(format!("cannot create {what} {}: {e}", path.display())))
}
