//! The transaction stage: one thread that tallies every transaction's
//! BEGIN, END and changes and decides them as the watermark passes
//! ([`crate::detect::transaction`]), and sums the key checks' verdicts of
//! every worker by transaction into summaries
//! ([`crate::detect::transaction::summary`]), final once every worker has
//! decided past them. Verdicts go to the sink as they are decided; the
//! transactions changed since the last checkpoint go into it (one entry per
//! transaction in [`Cf::Transactions`], and one per sum under
//! [`SUM_PREFIX`]) once the router and every worker have reached it, so
//! that a restart does not forget them. Unless state is durable (`vigil
//! check` without `--state`), nothing is written.

use smol_str::SmolStr;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::{Arrivals, Engine, PipelineError, SinkMsg};
use crate::detect::transaction::summary::{
    SummaryDecisions, SummaryRules, TxSum, TxSummaries, final_at,
};
use crate::detect::transaction::{
    TxBoundary, TxChange, TxDecisions, TxDetector, TxEntry, TxId, TxRecord, TxRules,
};
use crate::events::Violation;
use crate::mapping::Change;
use crate::model::{Millis, Name};
use crate::state::{Cf, StateBatch, StateError, Store, codec};
use crate::telemetry::{
    LateRecords, LateTransactionVerdicts, Stage, StageTimed, Stats, TransactionsTracked,
};

/// The first byte of the key of a transaction's sum in [`Cf::Transactions`]
/// (never the first of a UTF-8 transaction id).
const SUM_PREFIX: u8 = 0xff;

/// The first byte of the key of the transactions closed in one checkpoint
/// interval (then the interval's number, big-endian): their ids and when
/// each is forgotten, in one value.
const CLOSED_PREFIX: u8 = 0xfe;

/// The key of the stage's watermark at the last checkpoint.
const WATERMARK_KEY: [u8; 1] = [0xfd];

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
        sums: Vec<(TxId, TxSum)>,
        decided_until: Millis,
    },
    /// The sender has sent everything before checkpoint `epoch`; once the
    /// router and every worker have, the changes since the last one go to
    /// the sink.
    Checkpoint { epoch: u64 },
}

/// One record, as the transaction checks see it.
pub(super) enum TxItem {
    /// A change of a transaction that carries its number in it, or that
    /// obliges invalidations, or both. The change is the one the workers
    /// get: its table and record are read from it, not copied.
    Change {
        tx: TxId,
        change: Arc<Change>,
    },
    Boundary(TxBoundary),
}

impl TxItem {
    fn tx(&self) -> &TxId {
        match self {
            TxItem::Change { tx, .. } => tx,
            TxItem::Boundary(b) => &b.tx,
        }
    }

    /// What the transaction's tally takes of it.
    fn record(&self) -> Option<TxRecord<'_>> {
        match self {
            TxItem::Change { change, .. } => change.tx_order.map(|order| {
                TxRecord::Change(TxChange {
                    table: &change.table,
                    order,
                    ts: change.commit_ts_ms,
                    evidence: &change.provenance,
                })
            }),
            TxItem::Boundary(b) => Some(TxRecord::Boundary(b)),
        }
    }

    /// What the transaction's summary takes of it: the table of a change
    /// that obliges invalidations, and when they are due.
    fn due(&self) -> Option<(&Name, Millis)> {
        match self {
            TxItem::Change { change, .. } => {
                change.invalidations_due().map(|due| (&change.table, due))
            }
            TxItem::Boundary(_) => None,
        }
    }
}

pub(super) struct TxStage {
    detector: TxDetector,
    rules: TxRules,
    summaries: TxSummaries,
    summary_rules: SummaryRules,
    /// The router and the workers that have reached each checkpoint.
    reached: Arrivals,
    /// The values of closed transactions in the store: (interval number,
    /// when the last of them is forgotten), and the next number.
    closed_values: Vec<(u64, Millis)>,
    next_closed: u64,
    /// State is written at checkpoints (else it is thrown away at the
    /// end, as the key state of `vigil check` without `--state`).
    durable: bool,
    sink: Sender<SinkMsg>,
    stats: Arc<Stats>,
    watermark: Millis,
}

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

/// What the last checkpoint wrote of the transactions.
#[derive(Default)]
struct Loaded {
    /// Open transactions, by id.
    entries: Vec<(SmolStr, TxEntry)>,
    /// Closed transactions and when each is forgotten, and the values
    /// that hold them: (interval number, the last forgotten).
    closed: Vec<(SmolStr, Millis)>,
    closed_values: Vec<(u64, Millis)>,
    sums: Vec<(SmolStr, TxSum)>,
    watermark: Option<Millis>,
}

fn corrupt(message: &str) -> StateError {
    StateError::Corrupt {
        cf: Cf::Transactions.name(),
        message: message.into(),
    }
}

fn utf8_id(id: &[u8]) -> Result<SmolStr, StateError> {
    std::str::from_utf8(id)
        .map(SmolStr::new)
        .map_err(|_| corrupt("a transaction id that is not UTF-8"))
}

impl Loaded {
    fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        match key.split_first() {
            Some((&SUM_PREFIX, id)) => {
                let (_, sum) = codec::decode::<TxSum>(Cf::Transactions, value)?;
                self.sums.push((utf8_id(id)?, sum));
            }
            Some((&CLOSED_PREFIX, number)) => {
                let number = <[u8; 8]>::try_from(number)
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("a closed transactions key of the wrong length"))?;
                let (last, closed) =
                    codec::decode::<Vec<(SmolStr, Millis)>>(Cf::Transactions, value)?;
                self.closed_values.push((number, last));
                self.closed.extend(closed);
            }
            _ if key == WATERMARK_KEY => {
                let (_, watermark) = codec::decode::<Millis>(Cf::Transactions, value)?;
                self.watermark = Some(watermark);
            }
            _ => {
                let (_, entry) = codec::decode::<TxEntry>(Cf::Transactions, value)?;
                self.entries.push((utf8_id(key)?, entry));
            }
        }
        Ok(())
    }
}

/// Reads what the last checkpoint wrote of the transactions.
fn load(store: &dyn Store) -> Result<Loaded, StateError> {
    let mut loaded = Loaded::default();
    let mut failure = None;
    store.scan(
        Cf::Transactions,
        &[],
        &mut |key, value| match loaded.add(key, value) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(loaded),
    }
}

impl TxStage {
    pub(super) fn new(
        engine: &Engine,
        rules: TxRules,
        workers: usize,
        sink: Sender<SinkMsg>,
    ) -> Result<Self, PipelineError> {
        let loaded = load(&*engine.store)?;
        let summary_rules = SummaryRules {
            late_window_ms: engine.options.key_rules.late_window_ms,
            max_open: rules.max_open,
        };
        let watermark = loaded.watermark.unwrap_or(Millis::MIN);
        let next_closed = loaded
            .closed_values
            .iter()
            .map(|(number, _)| number + 1)
            .max()
            .unwrap_or(0);
        let mut detector = TxDetector::new(loaded.entries, loaded.closed, watermark, &rules);
        let mut summaries = TxSummaries::new(workers, loaded.sums, &summary_rules);
        let durable = engine.options.durable;
        if !durable {
            detector = detector.untracked();
            summaries = summaries.untracked();
        }
        Ok(TxStage {
            detector,
            rules,
            summaries,
            summary_rules,
            reached: Arrivals::new(workers + 1),
            closed_values: loaded.closed_values,
            next_closed,
            durable,
            sink,
            stats: Arc::clone(&engine.stats),
            watermark,
        })
    }

    pub(super) fn run(mut self, inbox: Receiver<TxMsg>) -> Result<(), PipelineError> {
        for msg in inbox {
            match msg {
                TxMsg::Batch { items, watermark } => {
                    let started = Instant::now();
                    let mut out = TxDecisions::default();
                    let mut summaries = SummaryDecisions::default();
                    // A transaction's records come mostly together: each
                    // run of them is looked up once.
                    let mut rest = &items[..];
                    while let Some(first) = rest.first() {
                        let tx = first.tx();
                        let n = rest.iter().position(|i| i.tx().key != tx.key);
                        let (run, after) = rest.split_at(n.unwrap_or(rest.len()));
                        rest = after;
                        let records = run.iter().filter_map(TxItem::record);
                        self.detector.on_records(
                            tx,
                            records,
                            self.watermark,
                            &self.rules,
                            &mut out,
                        );
                        self.summaries.on_changes(
                            tx,
                            run.iter().filter_map(TxItem::due),
                            &self.summary_rules,
                            &mut summaries,
                        );
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
                    let batch = self.checkpoint();
                    self.sink
                        .send(SinkMsg::Fragment { epoch, batch })
                        .map_err(disconnected)?;
                }
            }
        }
        Ok(())
    }

    /// What the checkpoint writes: the open transactions and the sums
    /// changed since the last (and deletes of those gone), the transactions
    /// closed since in one value, deletes of such values all forgotten by
    /// now, and the watermark; nothing when state is not durable.
    fn checkpoint(&mut self) -> StateBatch {
        let mut batch = StateBatch::default();
        if !self.durable {
            return batch;
        }
        let changed = self.detector.take_changed();
        let sums = self.summaries.take_changed();
        let deletes = changed
            .writes
            .delete
            .iter()
            .map(|id| id.as_bytes().to_vec());
        let sum_key = |id: &SmolStr| {
            let mut key = Vec::with_capacity(id.len() + 1);
            key.push(SUM_PREFIX);
            key.extend_from_slice(id.as_bytes());
            key
        };
        for key in deletes.chain(sums.delete.iter().map(sum_key)) {
            batch.delete(Cf::Transactions, 0, key);
        }
        for (id, entry) in &changed.writes.put {
            let value = codec::encode(entry.due, *entry);
            batch.put(Cf::Transactions, 0, id.as_bytes().to_vec(), value);
        }
        for (id, sum) in &sums.put {
            let value = codec::encode(final_at(sum, &self.summary_rules), *sum);
            batch.put(Cf::Transactions, 0, sum_key(id), value);
        }
        let closed_key = |number: u64| {
            let mut key = vec![CLOSED_PREFIX];
            key.extend_from_slice(&number.to_be_bytes());
            key
        };
        if let Some(last) = changed.closed.iter().map(|(_, forget)| *forget).max() {
            let number = self.next_closed;
            self.next_closed += 1;
            let value = codec::encode(last, &changed.closed);
            batch.put(Cf::Transactions, 0, closed_key(number), value);
            self.closed_values.push((number, last));
        }
        let watermark = self.watermark;
        self.closed_values.retain(|&(number, last)| {
            let forgotten = last <= watermark;
            if forgotten {
                batch.delete(Cf::Transactions, 0, closed_key(number));
            }
            !forgotten
        });
        let value = codec::encode(watermark, &watermark);
        batch.put(Cf::Transactions, 0, WATERMARK_KEY.to_vec(), value);
        batch
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
