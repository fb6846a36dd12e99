//! The sink: writes violations, storm events and dead letters as they come,
//! and completes each checkpoint once it is whole (the router's positions,
//! every worker's state changes and the storm stage's): it flushes the
//! outputs, then hands the state and positions to the committer, which
//! waits until the outputs up to that flush are acknowledged and writes
//! them in one atomic write (DESIGN.md section 8). The wait and the write
//! run on the committer's thread so that outputs never wait for the broker's
//! acknowledgements or for the store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::checkpoints::Checkpoints;
use super::{Acknowledgement, Outputs, PipelineError, Position, SinkMsg};
use crate::model::Millis;
use crate::state::{Cf, StateBatch, Store, codec};
use crate::telemetry::{
    CheckpointCommitted, DeadLettered, IncidentReported, Stage, StageTimed, Stats, StormReported,
    ViolationReported,
};
use crate::time::END_OF_TIME;

#[derive(Default)]
struct PendingCheckpoint {
    /// The stages' state changes, as they came: the committer joins them
    /// (a copy this thread would make the outputs wait for).
    fragments: Vec<StateBatch>,
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
    outputs: Box<dyn Outputs>,
    stats: Arc<Stats>,
    pending: BTreeMap<u64, PendingCheckpoint>,
    /// Checkpoints whose outputs are flushed, for the committer.
    commits: Sender<Commit>,
    /// The epochs the committer committed, in order.
    committed: Receiver<u64>,
    /// Positions of the checkpoints handed to the committer, to publish
    /// (see [`Outputs::committed`]) once committed.
    unpublished: VecDeque<(u64, Vec<Position>)>,
}

impl Sink {
    pub(super) fn new(
        parts: usize,
        outputs: Box<dyn Outputs>,
        stats: Arc<Stats>,
        commits: Sender<Commit>,
        committed: Receiver<u64>,
    ) -> Self {
        Sink {
            parts,
            outputs,
            stats,
            pending: BTreeMap::new(),
            commits,
            committed,
            unpublished: VecDeque::new(),
        }
    }

    /// Runs until every sender has hung up, then until the committer has
    /// committed what it was given.
    pub(super) fn run(mut self, inbox: Receiver<SinkMsg>) -> Result<(), PipelineError> {
        let served = self.serve(inbox);
        let Sink {
            mut outputs,
            commits,
            committed,
            mut unpublished,
            ..
        } = self;
        drop(commits);
        for epoch in committed {
            publish(&mut unpublished, outputs.as_mut(), epoch);
        }
        served
    }

    fn serve(&mut self, inbox: Receiver<SinkMsg>) -> Result<(), PipelineError> {
        for msg in inbox {
            let started = std::time::Instant::now();
            match msg {
                SinkMsg::DeadLetters(dead) => {
                    for d in &dead {
                        self.outputs.dead_letter(d)?;
                        self.stats.emit(DeadLettered(d.error.reason));
                    }
                }
                SinkMsg::Violations(violations) => {
                    for v in &violations {
                        self.outputs.violation(v)?;
                        self.stats.emit(ViolationReported(v.kind));
                    }
                }
                SinkMsg::Storms(events) => {
                    for e in &events {
                        self.outputs.storm(e)?;
                        self.stats.emit(StormReported(e.scope_type, e.phase));
                    }
                }
                SinkMsg::Incidents(events) => {
                    for e in &events {
                        self.outputs.incident(e)?;
                        self.stats.emit(IncidentReported(e.phase));
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
                    self.pending.entry(epoch).or_default().fragments.push(batch);
                    self.commit_if_whole(epoch)?;
                }
            }
            while let Ok(epoch) = self.committed.try_recv() {
                publish(&mut self.unpublished, self.outputs.as_mut(), epoch);
            }
            self.stats
                .emit(StageTimed(Stage::Commit, started.elapsed()));
        }
        Ok(())
    }

    fn commit_if_whole(&mut self, epoch: u64) -> Result<(), PipelineError> {
        let whole = self
            .pending
            .get(&epoch)
            .is_some_and(|p| p.fragments.len() == self.parts && p.barrier.is_some());
        if !whole {
            return Ok(());
        }
        let PendingCheckpoint {
            mut fragments,
            barrier,
        } = self.pending.remove(&epoch).expect("checked above");
        let Barrier {
            positions,
            watermark,
            done,
        } = barrier.expect("checked above");
        let mut offsets = StateBatch::default();
        for p in &positions {
            offsets.put(
                Cf::Offsets,
                p.partition,
                codec::offset_key(&p.source, p.partition),
                codec::offset_value(p.next_offset, p.event_time),
            );
        }
        fragments.push(offsets);
        // Outputs first: a crash between the two re-emits (same ids) rather
        // than loses.
        for fragment in &fragments {
            self.outputs.state(fragment)?;
        }
        let acknowledgement = self.outputs.flush(&positions)?;
        self.commits
            .send(Commit {
                epoch,
                acknowledgement,
                fragments,
                watermark,
                done,
            })
            .map_err(|_| PipelineError::Disconnected("committer"))?;
        self.unpublished.push_back((epoch, positions));
        Ok(())
    }
}

/// Tells the outputs the positions of the checkpoints up to `epoch`, now
/// committed.
fn publish(
    unpublished: &mut VecDeque<(u64, Vec<Position>)>,
    outputs: &mut dyn Outputs,
    epoch: u64,
) {
    while let Some((_, positions)) = unpublished.pop_front_if(|(e, _)| *e <= epoch) {
        outputs.committed(&positions);
    }
}

/// A checkpoint whose outputs are flushed, for the committer to write.
pub(super) struct Commit {
    epoch: u64,
    /// What the flush left to wait for before the write.
    acknowledgement: Option<Box<dyn Acknowledgement>>,
    /// Its state changes and positions, written together.
    fragments: Vec<StateBatch>,
    watermark: Millis,
    done: Vec<Sender<()>>,
}

/// How many times the store is swept (see [`crate::state::Store::sweep`])
/// while the retention horizon moves by one retention: what has expired
/// stays on disk for at most a quarter of the retention more.
const SWEEPS_PER_RETENTION: i64 = 4;

/// Writes the checkpoints the sink completes, in order, each in one atomic
/// write once its outputs are acknowledged, and tells who waits for them.
pub(super) struct Committer {
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    retention_ms: Millis,
    /// The retention horizon of the store's last sweep (see
    /// [`SWEEPS_PER_RETENTION`]); `None` before the first commit.
    swept: Option<Millis>,
    /// The latest checkpoint committed, for the workers (what they wrote
    /// by then may leave their memory).
    checkpoints: Arc<Checkpoints>,
    /// The epochs committed, for the sink.
    committed: Sender<u64>,
}

impl Committer {
    pub(super) fn new(
        store: Arc<dyn Store>,
        stats: Arc<Stats>,
        retention_ms: Millis,
        checkpoints: Arc<Checkpoints>,
        committed: Sender<u64>,
    ) -> Self {
        Committer {
            store,
            stats,
            retention_ms,
            swept: None,
            checkpoints,
            committed,
        }
    }

    /// Moves the store's retention horizon to `horizon` (it never goes
    /// back), and sweeps the store once it has moved by a share of the
    /// retention since the last sweep.
    fn age(&mut self, horizon: Millis) -> Result<(), PipelineError> {
        self.store.retention().advance(horizon);
        let step = (self.retention_ms / SWEEPS_PER_RETENTION).max(1);
        match self.swept {
            Some(swept) if horizon >= swept.saturating_add(step) => {
                self.store.sweep()?;
                self.swept = Some(horizon);
            }
            Some(_) => {}
            None => self.swept = Some(horizon),
        }
        Ok(())
    }

    /// Commits until the sink hangs up; returns the checkpoints committed.
    /// Workers waiting for a commit hear when it stops, for whatever
    /// reason.
    pub(super) fn run(mut self, inbox: Receiver<Commit>) -> Result<u64, PipelineError> {
        let committed = self.commit_all(inbox);
        self.checkpoints.stop();
        committed
    }

    fn commit_all(&mut self, inbox: Receiver<Commit>) -> Result<u64, PipelineError> {
        let mut count = 0;
        for commit in inbox {
            if let Some(acknowledgement) = commit.acknowledgement {
                acknowledgement.wait()?;
            }
            let started = std::time::Instant::now();
            let mut batch = StateBatch::default();
            for fragment in commit.fragments {
                batch.append(fragment);
            }
            self.store.write(batch)?;
            // At the end of time (every input ended) nothing has aged: what
            // the run kept stays for inspection and later runs.
            if commit.watermark != END_OF_TIME {
                self.age(commit.watermark.saturating_sub(self.retention_ms))?;
            }
            count += 1;
            self.checkpoints.commit(commit.epoch);
            self.stats.emit(CheckpointCommitted);
            // The sink is gone only when the run is failing.
            let _ = self.committed.send(commit.epoch);
            for d in commit.done {
                // The waiter may have given up; the commit stands either way.
                let _ = d.send(());
            }
            self.stats
                .emit(StageTimed(Stage::Commit, started.elapsed()));
        }
        Ok(count)
    }
}
