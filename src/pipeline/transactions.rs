//! The transaction stage: one thread that tallies every transaction's
//! BEGIN, END and changes and decides them as the watermark passes
//! ([`crate::detect::transaction`]). Verdicts go to the sink as they are
//! decided; the transactions changed since the last checkpoint go into it
//! (one entry per transaction in [`Cf::Transactions`]), so that a restart
//! does not forget them.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::{Engine, PipelineError, SinkMsg};
use crate::detect::transaction::{TxBoundary, TxChange, TxDecisions, TxDetector, TxEntry, TxRules};
use crate::model::Millis;
use crate::state::{Cf, StateBatch, StateError, Store, codec};
use crate::telemetry::{Stage, Stats};

/// What the router sends the transaction stage.
pub(super) enum TxMsg {
    /// Records to tally, then the watermark to decide up to.
    Batch {
        items: Vec<TxItem>,
        watermark: Millis,
    },
    /// Hand the transactions changed since the last checkpoint to the sink.
    Checkpoint { epoch: u64 },
}

/// One record, as the transaction checks see it.
pub(super) enum TxItem {
    Change(TxChange),
    Boundary(TxBoundary),
}

pub(super) struct TxStage {
    detector: TxDetector,
    rules: TxRules,
    sink: Sender<SinkMsg>,
    stats: Arc<Stats>,
    watermark: Millis,
}

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

/// Reads the transactions of the last checkpoint from the store.
fn load(store: &dyn Store) -> Result<Vec<(Arc<str>, TxEntry)>, StateError> {
    let mut entries = Vec::new();
    let mut failure = None;
    store.scan(Cf::Transactions, &[], &mut |key, value| {
        let decoded = codec::decode::<TxEntry>(Cf::Transactions, value).and_then(|(_, entry)| {
            let id = std::str::from_utf8(key).map_err(|_| StateError::Corrupt {
                cf: Cf::Transactions.name(),
                message: "a transaction id that is not UTF-8".into(),
            })?;
            Ok((Arc::from(id), entry))
        });
        match decoded {
            Ok(entry) => {
                entries.push(entry);
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(entries),
    }
}

impl TxStage {
    pub(super) fn new(
        engine: &Engine,
        rules: TxRules,
        sink: Sender<SinkMsg>,
    ) -> Result<Self, PipelineError> {
        Ok(TxStage {
            detector: TxDetector::new(load(&*engine.store)?),
            rules,
            sink,
            stats: Arc::clone(&engine.stats),
            watermark: Millis::MIN,
        })
    }

    pub(super) fn run(mut self, inbox: Receiver<TxMsg>) -> Result<(), PipelineError> {
        for msg in inbox {
            match msg {
                TxMsg::Batch { items, watermark } => {
                    let started = Instant::now();
                    let mut out = TxDecisions::default();
                    for item in &items {
                        match item {
                            TxItem::Change(c) => {
                                self.detector
                                    .on_change(c, self.watermark, &self.rules, &mut out)
                            }
                            TxItem::Boundary(b) => {
                                self.detector
                                    .on_boundary(b, self.watermark, &self.rules, &mut out)
                            }
                        }
                    }
                    self.watermark = self.watermark.max(watermark);
                    self.detector.advance(self.watermark, &self.rules, &mut out);
                    self.stats
                        .add_stage_time(Stage::Transactions, started.elapsed());
                    self.stats.add_late_records(out.late);
                    self.stats
                        .add_transactions(out.dropped, self.detector.open());
                    if out.dropped > 0 {
                        tracing::warn!(
                            dropped = out.dropped,
                            max = self.rules.max_open,
                            "open transactions over detect.max_open_transactions dropped undecided"
                        );
                    }
                    if !out.violations.is_empty() {
                        self.sink
                            .send(SinkMsg::Violations(out.violations))
                            .map_err(disconnected)?;
                    }
                }
                TxMsg::Checkpoint { epoch } => {
                    let mut batch = StateBatch::default();
                    for (id, entry) in self.detector.take_changed() {
                        let key = id.as_bytes().to_vec();
                        match entry {
                            Some(entry) => {
                                batch.put(Cf::Transactions, 0, key, codec::encode(entry.due, entry))
                            }
                            None => batch.delete(Cf::Transactions, 0, key),
                        }
                    }
                    self.sink
                        .send(SinkMsg::Fragment { epoch, batch })
                        .map_err(disconnected)?;
                }
            }
        }
        Ok(())
    }
}
