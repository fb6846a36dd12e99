//! The repartition topic between the two stages of `vigil run --stage`
//! (DESIGN.md section 9).
//!
//! - **Stage one** consumes the CDC and cache topics in `inputs.group_id`,
//!   keeps entity state per CDC partition number (handed over through
//!   `outputs.changelog_topic`), and publishes every key-level item to
//!   `inputs.repartition_topic`, keyed by cache key, with its watermark after
//!   them in every partition ([`KafkaRepartition`]). The records go through
//!   the outputs' producer, so each checkpoint has them acknowledged before
//!   it commits the input offsets they came from; with exactly-once they
//!   are in the checkpoint's transaction (see [`super::outputs`]).
//! - **Stage two** consumes the repartition topic in `<group_id>-stage2`,
//!   keeps key state per repartition partition (handed over through
//!   `outputs.repartition_changelog_topic`), and takes as each partition's
//!   event time the least mark of the stage-one producers it heard from
//!   within `detect.idle_timeout` ([`Marks`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};

use super::KafkaSetupError;
use super::outputs::SharedProducer;
use crate::config::Config;
use crate::hash;
use crate::model::Millis;
use crate::pipeline::{KeyedItem, OutputError, Repartition, Transfer};

/// How long the repartition topic's metadata may take to come.
const METADATA_WAIT: Duration = Duration::from_secs(10);

/// Which part of the pipeline a `vigil run` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The whole pipeline in one process (several instances share a group
    /// only with `inputs.co_partitioned = true`).
    Both,
    /// Decode, map, entity checks, storms; key-level items to the
    /// repartition topic.
    One,
    /// Key checks over the repartition topic.
    Two,
}

impl Stage {
    /// The consumer group of the stage.
    pub fn group_id(self, config: &Config) -> String {
        match self {
            Stage::Both | Stage::One => config.inputs.group_id.clone(),
            Stage::Two => format!("{}-stage2", config.inputs.group_id),
        }
    }

    /// The changelog its state is handed over through, if it is.
    pub fn changelog_topic(self, config: &Config) -> Option<&str> {
        match self {
            Stage::Both => config
                .inputs
                .co_partitioned
                .then_some(config.outputs.changelog_topic.as_str()),
            Stage::One => Some(&config.outputs.changelog_topic),
            Stage::Two => Some(&config.outputs.repartition_changelog_topic),
        }
    }
}

/// Stage one's side of the repartition topic: a [`Repartition`] over the
/// outputs' producer.
pub struct KafkaRepartition {
    producer: SharedProducer,
    topic: String,
    partitions: usize,
    /// This producer's name in its marks.
    producer_id: Arc<str>,
}

impl KafkaRepartition {
    /// Publishes to `inputs.repartition_topic` through `producer`, marking
    /// progress as `producer_id` (unique among the stage-one instances);
    /// fails unless the topic exists.
    pub fn new(
        config: &Config,
        producer: SharedProducer,
        producer_id: &str,
    ) -> Result<Self, KafkaSetupError> {
        let topic = config.inputs.repartition_topic.clone();
        let metadata = producer
            .producer
            .client()
            .fetch_metadata(Some(&topic), METADATA_WAIT)
            .map_err(|source| KafkaSetupError::Client {
                what: "repartition topic's metadata",
                source,
            })?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Err(KafkaSetupError::NoRepartitionTopic { topic });
        }
        Ok(KafkaRepartition {
            producer,
            topic,
            partitions,
            producer_id: producer_id.into(),
        })
    }

    fn send(&self, partition: usize, key: &[u8], value: &[u8]) -> Result<(), OutputError> {
        let record = BaseRecord::to(&self.topic)
            .partition(partition as i32)
            .key(key)
            .payload(value);
        self.producer.send(record).map_err(|e| OutputError::Kafka {
            topic: self.topic.clone(),
            message: e.to_string(),
        })
    }
}

impl Repartition for KafkaRepartition {
    fn publish(&mut self, items: &[KeyedItem], mark: Option<Millis>) -> Result<(), OutputError> {
        // The router publishes while the sink commits checkpoints.
        let _open = self.producer.transaction_lock();
        for item in items {
            let value = Transfer::Item(item.clone()).encode();
            match item {
                KeyedItem::Wildcard { pattern, .. } => {
                    for p in 0..self.partitions {
                        self.send(p, pattern.as_bytes(), &value)?;
                    }
                }
                _ => {
                    let key = item.key().unwrap_or_default();
                    // The same partition from every stage-one instance,
                    // whatever their clients' partitioner.
                    let partition = hash::shard_of_key(key, self.partitions);
                    self.send(partition, key.as_bytes(), &value)?;
                }
            }
        }
        if let Some(watermark) = mark {
            let value = Transfer::Mark {
                producer: Arc::clone(&self.producer_id),
                watermark,
            }
            .encode();
            for p in 0..self.partitions {
                self.send(p, self.producer_id.as_bytes(), &value)?;
            }
        }
        Ok(())
    }
}

/// Stage two's view of one repartition partition's marks: the latest mark
/// of each stage-one producer, and when it came.
#[derive(Debug, Default)]
pub struct Marks {
    producers: HashMap<Arc<str>, (Millis, Instant)>,
    /// The partition's event time last given to the pipeline.
    given: Option<Millis>,
}

impl Marks {
    /// `producer` marks `watermark`, read at `now`. Returns the partition's
    /// new event time when it moves: the least mark of the producers heard
    /// from within `idle` (a producer silent for longer, stopped or gone,
    /// no longer holds the partition back, and is forgotten).
    pub fn observe(
        &mut self,
        producer: Arc<str>,
        watermark: Millis,
        now: Instant,
        idle: Duration,
    ) -> Option<Millis> {
        let latest = self.producers.entry(producer).or_insert((watermark, now));
        *latest = (latest.0.max(watermark), now);
        self.producers
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < idle);
        let least = self.producers.values().map(|(w, _)| *w).min()?;
        if self.given.is_some_and(|given| least <= given) {
            return None;
        }
        self.given = Some(least);
        Some(least)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_follows_its_slowest_live_producer() {
        let idle = Duration::from_secs(10);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut marks = Marks::default();
        assert_eq!(marks.observe("a".into(), 100, at(0), idle), Some(100));
        // b is behind a: the partition waits for b.
        assert_eq!(marks.observe("b".into(), 50, at(1), idle), None);
        assert_eq!(marks.observe("a".into(), 300, at(2), idle), None);
        assert_eq!(marks.observe("b".into(), 200, at(3), idle), Some(200));
        // A mark never goes back.
        assert_eq!(marks.observe("b".into(), 150, at(4), idle), None);
        // b stops: once silent for the idle timeout, a alone counts.
        assert_eq!(marks.observe("a".into(), 400, at(9), idle), None);
        assert_eq!(marks.observe("a".into(), 500, at(15), idle), Some(500));
        // b back, behind: it holds the partition again, which stays put.
        assert_eq!(marks.observe("b".into(), 450, at(16), idle), None);
        assert_eq!(marks.observe("a".into(), 700, at(17), idle), None);
        assert_eq!(marks.observe("b".into(), 650, at(18), idle), Some(650));
    }
}
