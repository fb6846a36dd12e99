//! State handover between the instances of a group (with
//! `inputs.co_partitioned`, and in each stage of two): every committed state
//! change but the timers' (which the keys imply, see [`Cf::handed_over`])
//! is also written to the changelog topic, in the partition of its scope
//! (the input partition number it belongs to, the repartition partition in
//! stage two), and an instance that is assigned a partition number it did
//! not hold replaces its local state of that scope by the changelog's, and
//! indexes the timers of its keys, before reading the partition.
//!
//! A changelog record's key is the column family's code followed by the
//! storage key; its value is the stored value, or null for a delete.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::client_config;
use super::repartition::Stage;
use crate::config::Config;
use crate::pipeline::index_timers;
use crate::state::{Cf, StateBatch, StateError, Store, Write};

/// Writes applied to the store at a time while restoring.
const RESTORE_BATCH: usize = 10_000;
/// How long reading one changelog partition may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot read changelog {topic} partition {partition}: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("changelog {topic} partition {partition} was not read to its end within {}s", RESTORE_TIMEOUT.as_secs())]
    Timeout { topic: String, partition: i32 },
    #[error("changelog {topic} partition {partition} offset {offset}: {message}")]
    Corrupt {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The key of a write's changelog record.
pub fn record_key(w: &Write) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + w.key.len());
    k.push(w.cf.code());
    k.extend_from_slice(&w.key);
    k
}

/// The changelog of a group's state.
pub struct Changelog {
    topic: String,
    client: ClientConfig,
}

impl Changelog {
    /// The changelog of `stage`, when its state is handed over (see
    /// [`Stage::changelog_topic`]).
    pub fn of_stage(config: &Config, stage: Stage) -> Option<Self> {
        stage.changelog_topic(config).map(|topic| {
            let mut client = client_config(config, &[("isolation.level", "read_committed")]);
            client
                .set("enable.partition.eof", "true")
                .set("enable.auto.commit", "false")
                .set("group.id", format!("{}-changelog", stage.group_id(config)));
            Changelog {
                topic: topic.to_string(),
                client,
            }
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Replaces the local state of `scope` by the changelog's, and indexes
    /// the timers of its keys (timers a changelog written by an earlier
    /// version holds are left out: the keys say the same); returns the
    /// number of changelog records applied.
    pub fn restore(&self, store: &dyn Store, scope: i32) -> Result<u64, HandoverError> {
        let kafka = |source| HandoverError::Kafka {
            topic: self.topic.clone(),
            partition: scope,
            source,
        };
        store.delete_scope(scope)?;
        let consumer: BaseConsumer = self.client.create().map_err(kafka)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, scope, Offset::Beginning)
            .map_err(kafka)?;
        consumer.assign(&tpl).map_err(kafka)?;
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        let mut batch = StateBatch::default();
        let mut applied = 0;
        loop {
            if Instant::now() > deadline {
                return Err(HandoverError::Timeout {
                    topic: self.topic.clone(),
                    partition: scope,
                });
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(p))) if p == scope => break,
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => return Err(kafka(e)),
                Some(Ok(msg)) => {
                    let corrupt = |message: &str| HandoverError::Corrupt {
                        topic: self.topic.clone(),
                        partition: scope,
                        offset: msg.offset(),
                        message: message.into(),
                    };
                    let key = msg.key().ok_or_else(|| corrupt("record without key"))?;
                    let (&code, storage_key) =
                        key.split_first().ok_or_else(|| corrupt("empty key"))?;
                    let cf = Cf::from_code(code).ok_or_else(|| corrupt("unknown column family"))?;
                    if !cf.handed_over() {
                        continue;
                    }
                    match msg.payload() {
                        Some(v) => batch.put(cf, scope, storage_key.to_vec(), v.to_vec()),
                        None => batch.delete(cf, scope, storage_key.to_vec()),
                    }
                    applied += 1;
                    if batch.len() >= RESTORE_BATCH {
                        store.write(std::mem::take(&mut batch))?;
                    }
                }
            }
        }
        store.write(batch)?;
        index_timers(store, scope)?;
        Ok(applied)
    }
}
