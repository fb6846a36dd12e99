//! The incident stage: one thread that gathers the key checks' verdicts of
//! every worker ([`crate::detect::incident`]) and judges each second of
//! event time once every worker has decided everything due by its end, so
//! that incidents do not depend on the number of workers. Incident events go
//! to the sink as they are decided; the windows and incidents in progress
//! go into every checkpoint once every worker has reached it.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::{Arrivals, Engine, PipelineError, SinkMsg};
use crate::detect::incident::{IncidentDetector, IncidentRules, IncidentState, Tallies};
use crate::model::Millis;
use crate::state::{Cf, StateBatch, StateError, Store, codec};
use crate::telemetry::{IncidentsOpen, Stage, StageTimed, Stats};

/// The key of incident detection's state in [`Cf::Storms`] (the family of
/// this instance's own detectors).
const STATE_KEY: &[u8] = b"incidents";

/// What a worker sends the incident stage.
pub(super) enum IncidentMsg {
    /// The verdicts decided since the last message, and the watermark up to
    /// which every change due has been decided.
    Verdicts {
        worker: usize,
        tallies: Tallies,
        decided_until: Millis,
    },
    /// The worker has sent every verdict before checkpoint `epoch`.
    Checkpoint { epoch: u64 },
}

pub(super) struct IncidentStage {
    detector: IncidentDetector,
    rules: IncidentRules,
    sink: Sender<SinkMsg>,
    stats: Arc<Stats>,
    /// Per worker, the time up to which it has decided every verdict.
    decided: Vec<Millis>,
    /// The workers that have reached each checkpoint.
    reached: Arrivals,
    /// The time judged up to.
    judged: Millis,
    /// Whether the state changed since it was last handed to the sink.
    dirty: bool,
}

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

/// Reads incident detection's state from the store (a fresh one the first
/// time): the windows and incidents open as of the last checkpoint.
pub fn load_incidents(store: &dyn Store) -> Result<IncidentState, StateError> {
    Ok(match store.get(Cf::Storms, STATE_KEY)? {
        Some(bytes) => codec::decode(Cf::Storms, &bytes)?.1,
        None => IncidentState::default(),
    })
}

impl IncidentStage {
    pub(super) fn new(
        engine: &Engine,
        rules: IncidentRules,
        workers: usize,
        sink: Sender<SinkMsg>,
    ) -> Result<Self, PipelineError> {
        let state = load_incidents(&*engine.store)?;
        engine.stats.emit(IncidentsOpen(state.open_tables()));
        Ok(IncidentStage {
            detector: IncidentDetector::new(state),
            rules,
            sink,
            stats: Arc::clone(&engine.stats),
            decided: vec![Millis::MIN; workers],
            reached: Arrivals::new(workers),
            judged: Millis::MIN,
            dirty: false,
        })
    }

    pub(super) fn run(mut self, inbox: Receiver<IncidentMsg>) -> Result<(), PipelineError> {
        let mut events = Vec::new();
        for msg in inbox {
            match msg {
                IncidentMsg::Verdicts {
                    worker,
                    tallies,
                    decided_until,
                } => {
                    let started = Instant::now();
                    if !tallies.is_empty() {
                        self.detector.add(tallies);
                        self.dirty = true;
                    }
                    self.decided[worker] = self.decided[worker].max(decided_until);
                    let until = self.decided.iter().copied().min().unwrap_or(Millis::MIN);
                    if until.div_euclid(1000) > self.judged.div_euclid(1000) {
                        self.judged = until;
                        let unfollowed = self.detector.state().unfollowed();
                        self.detector.advance(until, &self.rules, &mut events);
                        self.dirty = true;
                        if self.detector.state().unfollowed() > unfollowed {
                            tracing::warn!(
                                max_tables = self.rules.max_tables,
                                "verdicts of a table not followed by incident detection: every \
                                 followed table has an incident open (raise incidents.max_tables)"
                            );
                        }
                    }
                    self.stats
                        .emit(StageTimed(Stage::Incidents, started.elapsed()));
                    if !events.is_empty() {
                        self.stats
                            .emit(IncidentsOpen(self.detector.state().open_tables()));
                        self.sink
                            .send(SinkMsg::Incidents(std::mem::take(&mut events)))
                            .map_err(disconnected)?;
                    }
                }
                IncidentMsg::Checkpoint { epoch } => {
                    if !self.reached.reach(epoch) {
                        continue;
                    }
                    let mut batch = StateBatch::default();
                    if std::mem::take(&mut self.dirty) {
                        batch.put(
                            Cf::Storms,
                            0,
                            STATE_KEY.to_vec(),
                            codec::encode(self.judged, self.detector.state()),
                        );
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
