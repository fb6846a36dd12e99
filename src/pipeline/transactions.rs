//! The transaction stage: one thread that tallies every transaction's
//! BEGIN, END and changes and decides them as the watermark passes
//! ([`crate::detect::transaction`]), and sums the key checks' verdicts of
//! every worker by transaction into summaries
//! ([`crate::detect::transaction::summary`]), final once every worker has
//! decided past them. Verdicts go to the sink as they are decided; the
//! transactions changed since the last checkpoint go into it (one entry per
//! transaction in [`Cf::Transactions`], and one per sum under
//! [`SUM_PREFIX`]) once the router and every worker have reached it, so
//! that a restart does not forget them.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::{Arrivals, Engine, PipelineError, SinkMsg};
use crate::detect::transaction::summary::{
    SummaryDecisions, SummaryRules, TxSum, TxSummaries, final_at,
};
use crate::detect::transaction::{TxBoundary, TxChange, TxDecisions, TxDetector, TxEntry, TxRules};
use crate::events::Violation;
use crate::model::Millis;
use crate::state::{Cf, StateBatch, StateError, Store, codec};
use crate::telemetry::{
    LateRecords, LateTransactionVerdicts, Stage, StageTimed, Stats, TransactionsTracked,
};

/// The first byte of the key of a transaction's sum in [`Cf::Transactions`]
/// (never the first of a UTF-8 transaction id).
const SUM_PREFIX: u8 = 0xff;

/// What the router and the workers send the transaction stage.
pub(super) enum TxMsg {
    /// Records to tally, then the watermark to decide up to (the router).
    Batch {
        items: Vec<TxItem>,
        watermark: Millis,
    },
    /// The key checks' verdicts by transaction since the last message, and
    /// the watermark up to which every change due has been decided (a
    /// worker).
    Verdicts {
        worker: usize,
        sums: Vec<(Arc<str>, TxSum)>,
        decided_until: Millis,
    },
    /// The sender has sent everything before checkpoint `epoch`; once the
    /// router and every worker have, the changes since the last one go to
    /// the sink.
    Checkpoint { epoch: u64 },
}

/// One record, as the transaction checks see it.
pub(super) enum TxItem {
    Change(TxChange),
    Boundary(TxBoundary),
    /// A change of a transaction that obliges invalidations, and when they
    /// are due.
    Due {
        tx: Arc<str>,
        table: Arc<str>,
        due: Millis,
    },
}

pub(super) struct TxStage {
    detector: TxDetector,
    rules: TxRules,
    summaries: TxSummaries,
    summary_rules: SummaryRules,
    /// The router and the workers that have reached each checkpoint.
    reached: Arrivals,
    sink: Sender<SinkMsg>,
    stats: Arc<Stats>,
    watermark: Millis,
}

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

/// The transactions and sums of the last checkpoint.
type Loaded = (Vec<(Arc<str>, TxEntry)>, Vec<(Arc<str>, TxSum)>);

/// Reads the transactions and sums of the last checkpoint from the store.
fn load(store: &dyn Store) -> Result<Loaded, StateError> {
    let mut entries = Vec::new();
    let mut sums = Vec::new();
    let mut failure = None;
    store.scan(Cf::Transactions, &[], &mut |key, value| {
        let (is_sum, id) = match key.split_first() {
            Some((&SUM_PREFIX, id)) => (true, id),
            _ => (false, key),
        };
        let id = std::str::from_utf8(id)
            .map(Arc::<str>::from)
            .map_err(|_| StateError::Corrupt {
                cf: Cf::Transactions.name(),
                message: "a transaction id that is not UTF-8".into(),
            });
        let decoded = id.and_then(|id| {
            if is_sum {
                let (_, sum) = codec::decode::<TxSum>(Cf::Transactions, value)?;
                sums.push((id, sum));
            } else {
                let (_, entry) = codec::decode::<TxEntry>(Cf::Transactions, value)?;
                entries.push((id, entry));
            }
            Ok(())
        });
        match decoded {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok((entries, sums)),
    }
}

impl TxStage {
    pub(super) fn new(
        engine: &Engine,
        rules: TxRules,
        workers: usize,
        sink: Sender<SinkMsg>,
    ) -> Result<Self, PipelineError> {
        let (entries, sums) = load(&*engine.store)?;
        let summary_rules = SummaryRules {
            late_window_ms: engine.options.key_rules.late_window_ms,
            max_open: rules.max_open,
        };
        Ok(TxStage {
            detector: TxDetector::new(entries),
            rules,
            summaries: TxSummaries::new(workers, sums, &summary_rules),
            summary_rules,
            reached: Arrivals::new(workers + 1),
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
                    let mut summaries = SummaryDecisions::default();
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
                            TxItem::Due { tx, table, due } => self.summaries.on_change(
                                tx,
                                table,
                                *due,
                                &self.summary_rules,
                                &mut summaries,
                            ),
                        }
                    }
                    self.watermark = self.watermark.max(watermark);
                    self.detector.advance(self.watermark, &self.rules, &mut out);
                    self.stats
                        .emit(StageTimed(Stage::Transactions, started.elapsed()));
                    self.stats.emit(LateRecords(out.late));
                    self.count(out.dropped, "open transactions dropped undecided");
                    self.send(out.violations)?;
                    self.summarised(summaries)?;
                }
                TxMsg::Verdicts {
                    worker,
                    sums,
                    decided_until,
                } => {
                    let started = Instant::now();
                    let mut out = SummaryDecisions::default();
                    self.summaries.on_verdicts(
                        worker,
                        sums,
                        decided_until,
                        &self.summary_rules,
                        &mut out,
                    );
                    self.stats
                        .emit(StageTimed(Stage::Transactions, started.elapsed()));
                    self.summarised(out)?;
                }
                TxMsg::Checkpoint { epoch } => {
                    if !self.reached.reach(epoch) {
                        continue;
                    }
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
                    for (id, sum) in self.summaries.take_changed() {
                        let mut key = Vec::with_capacity(id.len() + 1);
                        key.push(SUM_PREFIX);
                        key.extend_from_slice(id.as_bytes());
                        match sum {
                            Some(sum) => batch.put(
                                Cf::Transactions,
                                0,
                                key,
                                codec::encode(final_at(sum, &self.summary_rules), sum),
                            ),
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

    /// Counts the dropped transactions (or summaries) of a detector's
    /// round, and says so when it dropped some to stay within
    /// `detect.max_open_transactions`.
    fn count(&self, dropped: u64, what: &'static str) {
        self.stats.emit(TransactionsTracked {
            dropped,
            open: self.detector.open(),
            max: self.rules.max_open,
            what,
        });
    }

    /// Counts what the summaries decided, and sends their violations. What
    /// reached a summary already final is a message between stages, not an
    /// input record: it is counted apart from the late records.
    fn summarised(&mut self, out: SummaryDecisions) -> Result<(), PipelineError> {
        self.stats.emit(LateTransactionVerdicts(out.late));
        self.count(out.dropped, "transaction summaries dropped unsummarised");
        self.send(out.violations)
    }

    fn send(&self, violations: Vec<Violation>) -> Result<(), PipelineError> {
        if violations.is_empty() {
            return Ok(());
        }
        self.sink
            .send(SinkMsg::Violations(violations))
            .map_err(disconnected)
    }
}
