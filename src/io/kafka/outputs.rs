//! The Kafka producer of `vigil run`: violations and storm events
//! (CloudEvents in structured or binary mode, keyed by their subject) and
//! dead letters (the record unchanged, with Kafka Connect's error
//! headers and vigil's reason code).
//!
//! `vigil replay --to pipeline` publishes through the same producer, with
//! no consumer group behind it (its positions are kept with its state) and
//! no changelog; there a record the broker did not take fails the replay.
//!
//! At-least-once: at each checkpoint every record sent is acknowledged by
//! the broker before the state is committed; a record the broker rejected
//! is sent again (and the broker being away only makes the checkpoint
//! wait). Exactly-once: outputs and consumed offsets are committed in one
//! Kafka transaction, before the state; a crash between the two makes the
//! last checkpoint's outputs appear again, with the same ids.
//!
//! # Exactly-once across two stages
//!
//! Each stage commits one transaction per checkpoint, under a
//! transactional id of its own (`vigil-<the stage's group>-<member>`, see
//! [`KafkaOutputs::new`]). Stage one's holds its outputs, its repartition
//! records and marks (same producer, [`SharedProducer`]), its changelog
//! writes and its input offsets; stage two's its outputs, its changelog
//! writes and its repartition offsets. Stage two and the changelog
//! restores read `read_committed`, and so should the readers of the
//! outputs.
//!
//! - **A stage killed**: its open transaction is aborted when an instance
//!   with its name starts (the restarted one), else by the broker after
//!   `transaction.timeout.ms` (300 s by default); no `read_committed`
//!   reader ever sees its records. Until then such readers wait at its
//!   first record in every partition it wrote to: for stage one that is
//!   every repartition partition (marks go to all), so stage two waits
//!   with it. The instance resumes from the checkpoint in its store, or
//!   the partitions' next owners from the changelog, which holds what the
//!   last committed transaction held, offsets with state.
//! - **What a `read_committed` reader can see twice** (identical, with
//!   the same ids): the checkpoint of a crash between its transaction's
//!   commit and the write of its state (its inputs are read again); and
//!   records sent after a checkpoint's barrier while the sink still waited
//!   for the workers' parts, which join that checkpoint's transaction
//!   though their inputs are read again after a crash. Stage two applies a
//!   repartition record read twice as a redelivery: the verdicts stay.
//! - **Latency**: a transaction's records become visible when it commits,
//!   once per `state.checkpoint_interval` (1 s by default). Stage two sees
//!   stage one's records and marks up to one interval (plus the commit)
//!   later than at-least-once, so deadlines fire that much later; its own
//!   violations reach readers up to one interval more later. Stage two
//!   forgets a stage-one producer after `detect.idle_timeout` plus one
//!   interval of silence, since its marks come at each commit only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::avro::{AvroEvents, Family};
use super::handover::record_key;
use super::repartition::Stage;
use super::source::VigilConsumer;
use super::{KafkaSetupError, client_config, log_to_tracing, owned_headers};
use crate::config::{CloudEventsMode, Config, Guarantee, OutputFormat};
use crate::dead_letter::{DeadLetter, Origin};
use crate::detect::incident::IncidentEvent;
use crate::detect::storm::StormEvent;
use crate::events::{
    AVRO_CONTENT_TYPE, CLOUDEVENTS_CONTENT_TYPE, CloudEvent, DATA_CONTENT_TYPE, Violation,
};
use crate::pipeline::{OutputError, Outputs, Position};
use crate::state::StateBatch;
use crate::telemetry::{OutputSchemaUnregistered, ProducerQueueMeasured, Stats};

/// Producer defaults; `[kafka]` overrides them.
const PRODUCER_DEFAULTS: [(&str, &str); 5] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "300000"),
];

/// How long one wait for acknowledgements lasts before it is logged and
/// resumed.
const FLUSH_STEP: Duration = Duration::from_secs(5);
/// How long each look for acknowledgements waits. rdkafka's `flush` looks
/// every 100 ms while the producer's poll thread serves the deliveries,
/// which held every checkpoint, and the outputs behind it, that long.
const ACK_LOOK: Duration = Duration::from_millis(1);
/// Timeout of transactional calls.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A record to send (again).
#[derive(Debug, Clone)]
struct Outgoing {
    topic: String,
    /// `None`: the partitioner chooses (by key).
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_ms: Option<i64>,
}

/// Collects records the broker did not take, with why, for sending again.
pub struct DeliveryContext {
    failed: Mutex<Vec<(Outgoing, KafkaError)>>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka producer error (librdkafka retries)");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, msg)) = result {
            tracing::warn!(topic = msg.topic(), error = %error, "a record was not delivered");
            let outgoing = Outgoing {
                topic: msg.topic().to_string(),
                partition: Some(msg.partition()),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
                headers: owned_headers(msg),
                timestamp_ms: msg.timestamp().to_millis(),
            };
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((outgoing, error.clone()));
        }
    }
}

/// The outputs' producer as stage one's
/// [`super::repartition::KafkaRepartition`] shares it: the flush of a
/// checkpoint acknowledges (at-least-once) or commits (exactly-once) its
/// records too.
#[derive(Clone)]
pub struct SharedProducer {
    pub producer: Arc<ThreadedProducer<DeliveryContext>>,
    /// Held while a checkpoint's transaction is committed and the next one
    /// begun (exactly-once): librdkafka refuses records in between, so a
    /// thread other than the outputs' holds it while it sends.
    between_transactions: Arc<Mutex<()>>,
}

impl SharedProducer {
    /// Held by a sender on another thread while it sends (exactly-once: it
    /// waits for the next transaction to be open, and keeps it open), and by
    /// the flush while it commits a transaction and begins the next.
    pub fn transaction_lock(&self) -> MutexGuard<'_, ()> {
        self.between_transactions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Violations, storm and incident events and dead letters to Kafka topics.
pub struct KafkaOutputs {
    producer: SharedProducer,
    /// The consumer whose positions the outputs commit (`vigil run`); none
    /// for a replay, which keeps its positions with its state.
    consumer: Option<Arc<VigilConsumer>>,
    /// Send again a record the broker did not take (`vigil run`: the broker
    /// being away only makes the checkpoint wait); else it is an error.
    resend_failed: bool,
    guarantee: Guarantee,
    violations_topic: String,
    storms_topic: String,
    incidents_topic: String,
    dlq_topic: String,
    /// Where state changes are written, when state is handed over
    /// (`inputs.co_partitioned`, or a stage of two).
    changelog_topic: Option<String>,
    source: String,
    cloudevents_mode: CloudEventsMode,
    /// With `outputs.format = "avro"`: the encoder of the events' data.
    avro: Option<AvroEvents>,
    stats: Arc<Stats>,
    /// Set when the process must stop waiting for the broker (shutdown).
    give_up: Arc<AtomicBool>,
}

impl KafkaOutputs {
    /// Creates the producer (and, for exactly-once, opens its first
    /// transaction) of `stage`. `member` names this instance among those of
    /// its group, the same across its restarts: its transactional id is
    /// `vigil-<the stage's group>-<member>`, so that a restarted instance
    /// fences out what is left of its previous run (and aborts its open
    /// transaction), while instances of either stage never share an id.
    pub fn new(
        config: &Config,
        stage: Stage,
        consumer: Arc<VigilConsumer>,
        stats: Arc<Stats>,
        member: &str,
        give_up: Arc<AtomicBool>,
    ) -> Result<Self, KafkaSetupError> {
        let transactional_id = format!("vigil-{}-{member}", stage.group_id(config));
        let mut outputs = Self::build(config, Some(consumer), stats, &transactional_id, give_up)?;
        outputs.changelog_topic = stage.changelog_topic(config).map(str::to_string);
        Ok(outputs)
    }

    /// The producer, for stage one's repartition records.
    pub fn producer(&self) -> SharedProducer {
        self.producer.clone()
    }

    /// The outputs of `vigil replay --to pipeline`: the topics and records
    /// of `vigil run`, without a consumer (exactly-once commits the outputs
    /// alone) or a changelog, and a record the broker did not take (after
    /// librdkafka's retries, within `message.timeout.ms`) is an error.
    pub fn for_replay(
        config: &Config,
        stats: Arc<Stats>,
        instance: &str,
    ) -> Result<Self, KafkaSetupError> {
        Self::build(
            config,
            None,
            stats,
            &format!("vigil-{}-{instance}", config.inputs.group_id),
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn build(
        config: &Config,
        consumer: Option<Arc<VigilConsumer>>,
        stats: Arc<Stats>,
        transactional_id: &str,
        give_up: Arc<AtomicBool>,
    ) -> Result<Self, KafkaSetupError> {
        let guarantee = config.processing.guarantee;
        let mut client = match guarantee {
            Guarantee::AtLeastOnce => client_config(config, &PRODUCER_DEFAULTS),
            Guarantee::ExactlyOnce => {
                // librdkafka wants message.timeout.ms <= transaction.timeout.ms.
                let mut defaults = PRODUCER_DEFAULTS.to_vec();
                defaults.push(("transaction.timeout.ms", "300000"));
                client_config(config, &defaults)
            }
        };
        if guarantee == Guarantee::ExactlyOnce {
            client.set("transactional.id", transactional_id);
        }
        let context = DeliveryContext {
            failed: Mutex::new(Vec::new()),
        };
        let producer: ThreadedProducer<DeliveryContext> = client
            .create_with_context(context)
            .map_err(|source| KafkaSetupError::Client {
                what: "producer",
                source,
            })?;
        if guarantee == Guarantee::ExactlyOnce {
            producer
                .init_transactions(TRANSACTION_TIMEOUT)
                .and_then(|()| producer.begin_transaction())
                .map_err(|source| KafkaSetupError::Client {
                    what: "transactional producer",
                    source,
                })?;
        }
        let avro = match config.outputs.format {
            OutputFormat::Json => None,
            OutputFormat::Avro => Some(AvroEvents::new(config)?),
        };
        Ok(KafkaOutputs {
            producer: SharedProducer {
                producer: Arc::new(producer),
                between_transactions: Arc::new(Mutex::new(())),
            },
            resend_failed: consumer.is_some(),
            consumer,
            guarantee,
            violations_topic: config.outputs.violations_topic.clone(),
            storms_topic: config.outputs.storms_topic.clone(),
            incidents_topic: config.outputs.incidents_topic.clone(),
            dlq_topic: config.outputs.dlq_topic.clone(),
            changelog_topic: None,
            source: config.outputs.source.clone(),
            cloudevents_mode: config.outputs.cloudevents_mode,
            avro,
            stats,
            give_up,
        })
    }

    fn err(topic: &str, e: impl std::fmt::Display) -> OutputError {
        OutputError::Kafka {
            topic: topic.to_string(),
            message: e.to_string(),
        }
    }

    /// Hands a record to librdkafka, waiting while its queue is full.
    fn send(&self, out: &Outgoing) -> Result<(), OutputError> {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for (key, value) in &out.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&out.topic).headers(headers.clone());
            if let Some(k) = &out.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &out.payload {
                record = record.payload(p.as_slice());
            }
            if let Some(ts) = out.timestamp_ms {
                record = record.timestamp(ts);
            }
            if let Some(p) = out.partition {
                record = record.partition(p);
            }
            match self.producer.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.give_up.load(Ordering::Relaxed) {
                        return Err(Self::err(
                            &out.topic,
                            "stopping with the producer queue full",
                        ));
                    }
                    // Waits for deliveries to make room.
                    let _ = self.producer.producer.flush(Duration::from_millis(100));
                }
                Err((e, _)) => return Err(Self::err(&out.topic, e)),
            }
        }
    }

    /// Waits until every record sent is acknowledged, sending again the
    /// ones the broker rejected.
    fn acknowledge_all(&self) -> Result<(), OutputError> {
        let started = Instant::now();
        loop {
            self.await_deliveries(FLUSH_STEP);
            let failed = std::mem::take(
                &mut *self
                    .producer
                    .producer
                    .context()
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            let in_flight = self.producer.producer.in_flight_count();
            self.stats.emit(ProducerQueueMeasured(
                i64::from(in_flight) + failed.len() as i64,
            ));
            if in_flight == 0 && failed.is_empty() {
                return Ok(());
            }
            if !self.resend_failed
                && let Some((out, error)) = failed.first()
            {
                return Err(Self::err(
                    &out.topic,
                    format!(
                        "{} records were not delivered ({in_flight} more in flight): {error}",
                        failed.len()
                    ),
                ));
            }
            if self.give_up.load(Ordering::Relaxed) {
                return Err(Self::err(
                    &self.violations_topic,
                    format!(
                        "stopping with {} records not acknowledged",
                        in_flight as usize + failed.len()
                    ),
                ));
            }
            if !failed.is_empty() {
                tracing::warn!(
                    records = failed.len(),
                    "sending again records the broker did not take"
                );
            }
            for (out, _) in &failed {
                self.send(out)?;
            }
            if in_flight > 0 {
                tracing::warn!(
                    records = in_flight,
                    waited_s = started.elapsed().as_secs(),
                    "waiting for the broker to acknowledge outputs before committing"
                );
            }
        }
    }

    /// Waits up to `step` until no record is in flight (each delivered or
    /// failed). A flush also sends what lingers at once.
    fn await_deliveries(&self, step: Duration) {
        let until = Instant::now() + step;
        while self.producer.producer.in_flight_count() > 0 && Instant::now() < until {
            let _ = self.producer.producer.flush(ACK_LOOK);
        }
    }

    fn offsets(consumer: &VigilConsumer, positions: &[Position]) -> TopicPartitionList {
        let assigned = consumer.assignment().unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            if assigned.find_partition(&p.source, p.partition).is_some() {
                let _ =
                    tpl.add_partition_offset(&p.source, p.partition, Offset::Offset(p.next_offset));
            }
        }
        tpl
    }
}

/// Kafka Connect's dead-letter headers, plus vigil's reason code.
pub fn dead_letter_headers(d: &DeadLetter) -> Vec<(String, Option<Vec<u8>>)> {
    let (topic, partition, offset) = match &d.origin {
        Origin::Kafka(k) => (
            k.topic.clone(),
            k.partition.to_string(),
            k.offset.to_string(),
        ),
        Origin::Line {
            file, line, kafka, ..
        } => match kafka {
            Some(k) => (
                k.topic.clone(),
                k.partition.to_string(),
                k.offset.to_string(),
            ),
            None => (file.to_string(), "0".into(), line.to_string()),
        },
    };
    let text = |s: &str| Some(s.as_bytes().to_vec());
    vec![
        ("__connect.errors.topic".into(), text(&topic)),
        ("__connect.errors.partition".into(), text(&partition)),
        ("__connect.errors.offset".into(), text(&offset)),
        (
            "__connect.errors.stage".into(),
            text(d.error.reason.stage().as_str()),
        ),
        (
            "__connect.errors.exception.class.name".into(),
            text("vigil.RecordError"),
        ),
        (
            "__connect.errors.exception.message".into(),
            text(&d.error.message),
        ),
        ("vigil.error.reason".into(), text(d.error.reason.as_str())),
    ]
}

/// A CloudEvent record for a topic, keyed by its subject, in `mode`, its
/// data as JSON.
fn cloudevent_record(
    topic: &str,
    event: CloudEvent<'_, impl serde::Serialize>,
    mode: CloudEventsMode,
    source: &str,
) -> Outgoing {
    let (payload, headers) = match mode {
        CloudEventsMode::Structured => (
            event.structured(source),
            vec![(
                "content-type".into(),
                Some(CLOUDEVENTS_CONTENT_TYPE.as_bytes().to_vec()),
            )],
        ),
        CloudEventsMode::Binary => (
            event.data_json(),
            event.binary_headers(source, DATA_CONTENT_TYPE),
        ),
    };
    event_record(topic, event.subject, payload.into_bytes(), headers)
}

/// A record of an event: keyed by its subject.
fn event_record(
    topic: &str,
    subject: String,
    payload: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
) -> Outgoing {
    Outgoing {
        topic: topic.to_string(),
        partition: None,
        key: Some(subject.into_bytes()),
        payload: Some(payload),
        headers,
        timestamp_ms: None,
    }
}

/// How long the outputs wait between two tries while the Schema Registry
/// is unreachable.
const REGISTRY_RETRY: Duration = Duration::from_secs(1);

impl KafkaOutputs {
    /// The record of an event of `family` in the configured format: JSON
    /// (structured or binary mode), or Avro in binary mode. While the
    /// Schema Registry cannot be reached to register a schema, waits (the
    /// pipeline behind waits with it) until it can or vigil stops.
    fn event(
        &mut self,
        family: Family,
        event: CloudEvent<'_, impl serde::Serialize>,
    ) -> Result<Outgoing, OutputError> {
        let topic = match family {
            Family::Violation => &self.violations_topic,
            Family::Storm => &self.storms_topic,
            Family::Incident => &self.incidents_topic,
        };
        let Some(avro) = &mut self.avro else {
            return Ok(cloudevent_record(
                topic,
                event,
                self.cloudevents_mode,
                &self.source,
            ));
        };
        let payload = loop {
            match avro.encode(family, &event.data) {
                Ok(payload) => break payload,
                Err(e) if e.is_retryable() && !self.give_up.load(Ordering::Relaxed) => {
                    self.stats.emit(OutputSchemaUnregistered {
                        topic,
                        error: &e,
                        wait: REGISTRY_RETRY,
                    });
                    std::thread::sleep(REGISTRY_RETRY);
                }
                Err(e) => return Err(Self::err(topic, e)),
            }
        };
        let headers = event.binary_headers(&self.source, AVRO_CONTENT_TYPE);
        Ok(event_record(topic, event.subject, payload, headers))
    }
}

impl Outputs for KafkaOutputs {
    fn violation(&mut self, v: &Violation) -> Result<(), OutputError> {
        let record = self.event(Family::Violation, v.cloudevent())?;
        self.send(&record)
    }

    fn storm(&mut self, e: &StormEvent) -> Result<(), OutputError> {
        let record = self.event(Family::Storm, e.cloudevent())?;
        self.send(&record)
    }

    fn incident(&mut self, e: &IncidentEvent) -> Result<(), OutputError> {
        let record = self.event(Family::Incident, e.cloudevent())?;
        self.send(&record)
    }

    fn dead_letter(&mut self, d: &DeadLetter) -> Result<(), OutputError> {
        let mut headers = dead_letter_headers(d);
        let (key, payload, timestamp_ms) = match &d.origin {
            Origin::Kafka(k) => {
                headers.splice(0..0, k.headers.iter().cloned());
                (k.key.clone(), k.value.clone(), k.timestamp_ms)
            }
            Origin::Line { text, kafka, .. } => match kafka {
                Some(k) => {
                    headers.splice(0..0, k.headers.iter().cloned());
                    (k.key.clone(), k.value.clone(), k.timestamp_ms)
                }
                None => (None, Some(text.clone()), None),
            },
        };
        self.send(&Outgoing {
            topic: self.dlq_topic.clone(),
            partition: None,
            key,
            payload,
            headers,
            timestamp_ms,
        })
    }

    fn state(&mut self, batch: &StateBatch) -> Result<(), OutputError> {
        let Some(topic) = &self.changelog_topic else {
            return Ok(());
        };
        for w in batch.writes.iter().filter(|w| w.cf.handed_over()) {
            self.send(&Outgoing {
                topic: topic.clone(),
                partition: Some(w.scope),
                key: Some(record_key(w)),
                payload: w.value.clone(),
                headers: Vec::new(),
                timestamp_ms: None,
            })?;
        }
        Ok(())
    }

    fn flush(&mut self, positions: &[Position]) -> Result<(), OutputError> {
        match self.guarantee {
            Guarantee::AtLeastOnce => self.acknowledge_all(),
            Guarantee::ExactlyOnce => {
                let sent = match &self.consumer {
                    Some(consumer) => {
                        let offsets = Self::offsets(consumer, positions);
                        let group = consumer.group_metadata().ok_or_else(|| {
                            Self::err(&self.violations_topic, "the consumer has no group metadata")
                        })?;
                        self.producer.producer.send_offsets_to_transaction(
                            &offsets,
                            &group,
                            TRANSACTION_TIMEOUT,
                        )
                    }
                    None => Ok(()),
                };
                let _between = self.producer.transaction_lock();
                let producer = &self.producer.producer;
                let committed =
                    sent.and_then(|()| producer.commit_transaction(TRANSACTION_TIMEOUT));
                if let Err(e) = committed {
                    let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
                    return Err(Self::err(
                        &self.violations_topic,
                        format!("transaction failed: {e}"),
                    ));
                }
                producer
                    .begin_transaction()
                    .map_err(|e| Self::err(&self.violations_topic, e))
            }
        }
    }

    fn committed(&mut self, positions: &[Position]) {
        if self.guarantee == Guarantee::AtLeastOnce
            && let Some(consumer) = &self.consumer
        {
            let offsets = Self::offsets(consumer, positions);
            if offsets.count() > 0
                && let Err(e) = consumer.commit(&offsets, CommitMode::Async)
            {
                tracing::warn!(error = %e, "cannot commit offsets to Kafka (lag monitoring only; vigil's state has them)");
            }
        }
    }
}
