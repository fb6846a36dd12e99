//! The storm stage: one thread that counts every invalidation by scope and
//! judges each second of event time once the watermark has passed it
//! ([`crate::detect::storm`]). Storm events go to the sink as they are
//! decided; the baselines and storms in progress go into every checkpoint,
//! so that a restart does not forget them.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::{Engine, PipelineError, SinkMsg};
use crate::detect::storm::{StormDetector, StormRules, StormState};
use crate::model::{CacheKeys, Millis, Name};
use crate::state::{Cf, StateBatch, StateError, Store, codec};
use crate::telemetry::{Stage, StageTimed, Stats, StormsMeasured};

/// The one key of [`Cf::Storms`].
const STATE_KEY: &[u8] = b"detector";

/// What the router sends the storm stage.
pub(super) enum StormMsg {
    /// Invalidations to count, then the watermark to judge up to.
    Batch {
        items: Vec<Observed>,
        watermark: Millis,
    },
    /// Hand the detector's state to the sink.
    Checkpoint { epoch: u64 },
}

/// One invalidation event, as storm detection sees it.
pub(super) struct Observed {
    pub ts: Millis,
    pub keys: CacheKeys,
    pub service: Option<Name>,
}

pub(super) struct StormStage {
    detector: StormDetector,
    rules: StormRules,
    sink: Sender<SinkMsg>,
    stats: Arc<Stats>,
    watermark: Millis,
    /// The last second judged when the state was last handed to the sink.
    persisted: Option<i64>,
}

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

/// Reads the detector's state from the store (a fresh one the first time):
/// the baselines and storms in progress as of the last checkpoint.
pub fn load_storms(store: &dyn Store) -> Result<StormState, StateError> {
    Ok(match store.get(Cf::Storms, STATE_KEY)? {
        Some(bytes) => codec::decode(Cf::Storms, &bytes)?.1,
        None => StormState::default(),
    })
}

impl StormStage {
    pub(super) fn new(
        engine: &Engine,
        rules: StormRules,
        sink: Sender<SinkMsg>,
    ) -> Result<Self, PipelineError> {
        let detector = StormDetector::new(load_storms(&*engine.store)?);
        Ok(StormStage {
            persisted: detector.judged_until(),
            detector,
            rules,
            sink,
            stats: Arc::clone(&engine.stats),
            watermark: Millis::MIN,
        })
    }

    pub(super) fn run(mut self, inbox: Receiver<StormMsg>) -> Result<(), PipelineError> {
        let mut events = Vec::new();
        for msg in inbox {
            match msg {
                StormMsg::Batch { items, watermark } => {
                    let started = Instant::now();
                    for o in &items {
                        self.detector
                            .observe(o.ts, &o.keys, o.service.as_deref(), &self.rules);
                    }
                    self.detector.advance(watermark, &self.rules, &mut events);
                    self.watermark = self.watermark.max(watermark);
                    self.stats
                        .emit(StageTimed(Stage::Storms, started.elapsed()));
                    self.stats.emit(StormsMeasured {
                        rates: self.detector.last_rates(),
                        active: self.detector.active(),
                    });
                    if !events.is_empty() {
                        self.sink
                            .send(SinkMsg::Storms(std::mem::take(&mut events)))
                            .map_err(disconnected)?;
                    }
                }
                StormMsg::Checkpoint { epoch } => {
                    let mut batch = StateBatch::default();
                    let judged = self.detector.judged_until();
                    if judged != self.persisted {
                        batch.put(
                            Cf::Storms,
                            0,
                            STATE_KEY.to_vec(),
                            codec::encode(self.watermark, self.detector.state()),
                        );
                        self.persisted = judged;
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
