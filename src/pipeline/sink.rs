//! The sink: writes violations, storm events and dead letters as they come,
//! and commits each checkpoint once it is whole (the router's positions,
//! every worker's state changes and the storm stage's): outputs flushed first, then state and positions
//! in one atomic write (DESIGN.md section 8).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::Receiver;

use super::{Outputs, PipelineError, Position, SinkMsg};
use crate::model::Millis;
use crate::state::{Cf, StateBatch, Store, codec};
use crate::telemetry::{Stage, Stats};
use crate::time::END_OF_TIME;

#[derive(Default)]
struct PendingCheckpoint {
    fragments: usize,
    batch: StateBatch,
    barrier: Option<Barrier>,
}

/// The router's part of a checkpoint.
struct Barrier {
    positions: Vec<Position>,
    watermark: Millis,
    done: Vec<crossbeam_channel::Sender<()>>,
}

pub(super) struct Sink {
    /// State fragments that make a checkpoint whole (one per worker, and
    /// the storm stage's).
    parts: usize,
    store: Arc<dyn Store>,
    outputs: Box<dyn Outputs>,
    stats: Arc<Stats>,
    retention_ms: Millis,
    pending: BTreeMap<u64, PendingCheckpoint>,
    committed: u64,
    /// The latest checkpoint committed, for the workers (what they wrote
    /// by then may leave their memory).
    committed_epoch: Arc<AtomicU64>,
}

impl Sink {
    pub(super) fn new(
        parts: usize,
        store: Arc<dyn Store>,
        outputs: Box<dyn Outputs>,
        stats: Arc<Stats>,
        retention_ms: Millis,
        committed_epoch: Arc<AtomicU64>,
    ) -> Self {
        Sink {
            parts,
            store,
            outputs,
            stats,
            retention_ms,
            pending: BTreeMap::new(),
            committed: 0,
            committed_epoch,
        }
    }

    /// Runs until every sender has hung up; returns the checkpoints committed.
    pub(super) fn run(mut self, inbox: Receiver<SinkMsg>) -> Result<u64, PipelineError> {
        for msg in inbox {
            let started = std::time::Instant::now();
            match msg {
                SinkMsg::DeadLetters(dead) => {
                    for d in &dead {
                        self.outputs.dead_letter(d)?;
                        self.stats.add_dead_letter(d.error.reason);
                    }
                }
                SinkMsg::Violations(violations) => {
                    for v in &violations {
                        self.outputs.violation(v)?;
                        self.stats.add_violation(v.kind);
                    }
                }
                SinkMsg::Storms(events) => {
                    for e in &events {
                        self.outputs.storm(e)?;
                        self.stats.add_storm_event(e.scope_type, e.phase);
                    }
                }
                SinkMsg::Barrier {
                    epoch,
                    positions,
                    watermark,
                    done,
                } => {
                    self.pending.entry(epoch).or_default().barrier = Some(Barrier {
                        positions,
                        watermark,
                        done,
                    });
                    self.commit_if_whole(epoch)?;
                }
                SinkMsg::Fragment { epoch, batch } => {
                    let p = self.pending.entry(epoch).or_default();
                    p.fragments += 1;
                    p.batch.append(batch);
                    self.commit_if_whole(epoch)?;
                }
            }
            self.stats.add_stage_time(Stage::Commit, started.elapsed());
        }
        Ok(self.committed)
    }

    fn commit_if_whole(&mut self, epoch: u64) -> Result<(), PipelineError> {
        let whole = self
            .pending
            .get(&epoch)
            .is_some_and(|p| p.fragments == self.parts && p.barrier.is_some());
        if !whole {
            return Ok(());
        }
        let PendingCheckpoint {
            mut batch, barrier, ..
        } = self.pending.remove(&epoch).expect("checked above");
        let Barrier {
            positions,
            watermark,
            done,
        } = barrier.expect("checked above");
        for p in &positions {
            batch.put(
                Cf::Offsets,
                p.partition,
                codec::offset_key(&p.source, p.partition),
                codec::offset_value(p.next_offset),
            );
        }
        // Outputs first: a crash between the two re-emits (same ids) rather
        // than loses.
        self.outputs.state(&batch)?;
        self.outputs.flush(&positions)?;
        self.store.write(batch)?;
        // At the end of time (every input ended) nothing has aged: what the
        // run kept stays for inspection and later runs.
        if watermark != END_OF_TIME {
            self.store
                .retention()
                .advance(watermark.saturating_sub(self.retention_ms));
        }
        self.committed += 1;
        self.committed_epoch.store(epoch, Ordering::Release);
        self.stats.add_checkpoint();
        self.outputs.committed(&positions);
        for d in done {
            // The waiter may have given up; the commit stands either way.
            let _ = d.send(());
        }
        Ok(())
    }
}
