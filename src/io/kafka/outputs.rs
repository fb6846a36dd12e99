//! The Kafka producer of `vigil run`: violations and storm events
//! (CloudEvents in structured or binary mode, keyed by their subject) and
//! dead letters (the record unchanged, with Kafka Connect's error
//! headers and vigil's reason code).
//!
//! `vigil replay --to pipeline` publishes through the same producer, with
//! no consumer group behind it (its positions are kept with its state) and
//! no changelog; there a record the broker did not take fails the replay.
//!
//! At-least-once: every record sent before a checkpoint's flush (outputs,
//! changelog writes, stage one's repartition records) is acknowledged by
//! the broker before the checkpoint's state is committed; a record the
//! broker rejected is sent again (and the broker being away only makes the
//! checkpoint wait). Each record carries the [`Round`] of records sent
//! between two flushes it belongs to, and the committer waits for the
//! round of its checkpoint ([`Acknowledged`]) while the sink goes on
//! writing: violations never wait behind a checkpoint.
//!
//! Exactly-once: outputs and consumed offsets are committed in one Kafka
//! transaction, before the state; a crash between the two makes the last
//! checkpoint's outputs appear again, with the same ids.
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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::avro::{AvroEvents, Family};
use super::handover::record_key;
use super::repartition::Stage;
use super::source::VigilConsumer;
use super::{KafkaSetupError, client_config, log_to_tracing, owned_headers, send_unless};
use crate::config::{CloudEventsMode, Config, Guarantee, OutputFormat};
use crate::dead_letter::{DeadLetter, Origin};
use crate::detect::incident::IncidentEvent;
use crate::detect::storm::StormEvent;
use crate::events::{
    AVRO_CONTENT_TYPE, CLOUDEVENTS_CONTENT_TYPE, CloudEvent, DATA_CONTENT_TYPE, Violation,
};
use crate::pipeline::{Acknowledgement, OutputError, Outputs, Position};
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

/// The records sent between two checkpoints' flushes (with those sent
/// again for them): the later checkpoint commits once the broker has
/// acknowledged every one. Each record carries its round to its delivery
/// report.
#[derive(Default)]
pub struct Round {
    state: Mutex<RoundState>,
    /// Signalled when the last record is reported, or one fails.
    changed: Condvar,
}

#[derive(Default)]
struct RoundState {
    /// Sent, and not reported yet.
    in_flight: usize,
    /// Reported as not delivered, with why, for sending again.
    failed: Vec<(Outgoing, KafkaError)>,
}

impl Round {
    fn lock(&self) -> MutexGuard<'_, RoundState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more record of the round, to carry with it.
    fn join(self: &Arc<Self>) -> Arc<Self> {
        self.lock().in_flight += 1;
        Arc::clone(self)
    }

    /// A record of the round is reported: delivered, failed (with the
    /// record, to send again), or never handed to librdkafka.
    fn report(&self, failed: Option<(Outgoing, KafkaError)>) {
        let mut state = self.lock();
        state.in_flight -= 1;
        state.failed.extend(failed);
        if state.in_flight == 0 || !state.failed.is_empty() {
            self.changed.notify_all();
        }
    }

    /// Waits up to `step` until every record is reported or one failed;
    /// returns how many are still in flight, and takes the failed ones.
    fn settle(&self, step: Duration) -> (usize, Vec<(Outgoing, KafkaError)>) {
        let (mut state, _) = self
            .changed
            .wait_timeout_while(self.lock(), step, |s| {
                s.in_flight > 0 && s.failed.is_empty()
            })
            .unwrap_or_else(PoisonError::into_inner);
        (state.in_flight, std::mem::take(&mut state.failed))
    }
}

/// Reports each record's delivery to its round.
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka producer error (librdkafka retries)");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Round>;

    fn delivery(&self, result: &DeliveryResult<'_>, round: Arc<Round>) {
        let failed = result.as_ref().err().map(|(error, msg)| {
            tracing::warn!(topic = msg.topic(), error = %error, "a record was not delivered");
            let outgoing = Outgoing {
                topic: msg.topic().to_string(),
                partition: Some(msg.partition()),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
                headers: owned_headers(msg),
                timestamp_ms: msg.timestamp().to_millis(),
            };
            (outgoing, error.clone())
        });
        round.report(failed);
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
    /// The round records sent now belong to; a flush begins the next.
    round: Arc<Mutex<Arc<Round>>>,
    /// Set when the process must stop waiting for the broker (shutdown).
    give_up: Arc<AtomicBool>,
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

    /// Hands a record to librdkafka in the current round, waiting while
    /// its queue is full.
    pub fn send<K, P>(&self, record: BaseRecord<'_, K, P>) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        // Joined under the lock a flush ends the round with: a round ended
        // gains no record but those sent again for it.
        let round = self
            .round
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join();
        self.send_in(round, record)
    }

    /// Ends the current round and begins the next; returns the one ended.
    fn end_round(&self) -> Arc<Round> {
        let mut current = self.round.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *current)
    }

    /// Hands a record, counted in `round`, to librdkafka, waiting while its
    /// queue is full (unless the process is stopping).
    fn send_in<K, P>(
        &self,
        round: Arc<Round>,
        record: BaseRecord<'_, K, P>,
    ) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let record = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: round,
        };
        send_unless(&self.producer, record, &self.give_up).map_err(|(e, back)| {
            back.delivery_opaque.report(None);
            e
        })
    }
}

/// A record to send (again), as a librdkafka record.
fn base_record<'a>(out: &'a Outgoing) -> BaseRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
    for (key, value) in &out.headers {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let mut record = BaseRecord::to(&out.topic).headers(headers);
    record.key = out.key.as_deref();
    record.payload = out.payload.as_deref();
    record.timestamp = out.timestamp_ms;
    record.partition = out.partition;
    record
}

/// The round of records a checkpoint's flush ended, which the committer
/// waits for (at-least-once): every record acknowledged, those the broker
/// rejected sent again (`vigil run`) or an error (a replay).
struct Acknowledged {
    round: Arc<Round>,
    producer: SharedProducer,
    resend_failed: bool,
    stats: Arc<Stats>,
    /// Named in errors.
    topic: String,
}

impl Acknowledgement for Acknowledged {
    fn wait(self: Box<Self>) -> Result<(), OutputError> {
        let started = Instant::now();
        loop {
            let (in_flight, failed) = self.round.settle(FLUSH_STEP);
            self.stats.emit(ProducerQueueMeasured(
                i64::from(self.producer.producer.in_flight_count()) + failed.len() as i64,
            ));
            if in_flight == 0 && failed.is_empty() {
                return Ok(());
            }
            if !self.resend_failed
                && let Some((out, error)) = failed.first()
            {
                return Err(KafkaOutputs::err(
                    &out.topic,
                    format!(
                        "{} records were not delivered ({in_flight} more in flight): {error}",
                        failed.len()
                    ),
                ));
            }
            if self.producer.give_up.load(Ordering::Relaxed) {
                return Err(KafkaOutputs::err(
                    &self.topic,
                    format!(
                        "stopping with {} records not acknowledged",
                        in_flight + failed.len()
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
                self.producer
                    .send_in(self.round.join(), base_record(out))
                    .map_err(|e| KafkaOutputs::err(&out.topic, e))?;
            }
            if failed.is_empty() {
                tracing::warn!(
                    records = in_flight,
                    waited_s = started.elapsed().as_secs(),
                    "waiting for the broker to acknowledge outputs before committing"
                );
            }
        }
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
        let producer: ThreadedProducer<DeliveryContext> = client
            .create_with_context(DeliveryContext)
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
                round: Arc::default(),
                give_up,
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
        self.producer
            .send(base_record(out))
            .map_err(|e| Self::err(&out.topic, e))
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
                Err(e) if e.is_retryable() && !self.producer.give_up.load(Ordering::Relaxed) => {
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

    fn flush(
        &mut self,
        positions: &[Position],
    ) -> Result<Option<Box<dyn Acknowledgement>>, OutputError> {
        match self.guarantee {
            Guarantee::AtLeastOnce => Ok(Some(Box::new(Acknowledged {
                round: self.producer.end_round(),
                producer: self.producer.clone(),
                resend_failed: self.resend_failed,
                stats: Arc::clone(&self.stats),
                topic: self.violations_topic.clone(),
            }))),
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
                // The transaction's commit waits for its records.
                self.producer.end_round();
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
                    .map_err(|e| Self::err(&self.violations_topic, e))?;
                Ok(None)
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

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::mocking::MockCluster;

    use super::*;

    /// A producer of the outputs on a mock cluster of two brokers, where
    /// broker 1 leads topic `fast` and broker 2 topic `slow`.
    fn producer(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> SharedProducer {
        for (topic, leader) in [("fast", 1), ("slow", 2)] {
            cluster.create_topic(topic, 1, 1).unwrap();
            cluster.partition_leader(topic, 0, Some(leader)).unwrap();
        }
        let producer: ThreadedProducer<DeliveryContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "0")
            .create_with_context(DeliveryContext)
            .unwrap();
        SharedProducer {
            producer: Arc::new(producer),
            between_transactions: Arc::default(),
            round: Arc::default(),
            give_up: Arc::default(),
        }
    }

    /// What a flush that ended `round` leaves the committer to wait for.
    fn acknowledged(producer: &SharedProducer, round: Arc<Round>) -> Box<dyn Acknowledgement> {
        Box::new(Acknowledged {
            round,
            producer: producer.clone(),
            resend_failed: true,
            stats: Arc::new(Stats::default()),
            topic: "fast".into(),
        })
    }

    /// Waits for `acknowledgement` on a thread of its own, at most `limit`.
    fn settles_within(acknowledgement: Box<dyn Acknowledgement>, limit: Duration) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || tx.send(acknowledgement.wait().is_ok()));
        rx.recv_timeout(limit) == Ok(true)
    }

    #[test]
    fn a_checkpoint_waits_for_the_records_of_its_own_round_only() {
        let cluster = MockCluster::new(2).unwrap();
        let producer = producer(&cluster);
        // Round 1 goes to a live broker.
        for i in 0..10 {
            let payload = format!("first {i}");
            producer
                .send(BaseRecord::<(), _>::to("fast").payload(&payload))
                .unwrap();
        }
        let first = acknowledged(&producer, producer.end_round());
        // Round 2 goes to a broker that is down: it stays in flight.
        cluster.broker_down(2).unwrap();
        producer
            .send(BaseRecord::<(), _>::to("slow").payload("second"))
            .unwrap();
        let second = producer.end_round();
        assert!(
            settles_within(first, Duration::from_secs(30)),
            "the first round is acknowledged while the second waits"
        );
        assert_eq!(
            second.settle(Duration::ZERO).0,
            1,
            "the second round's record is still in flight"
        );
        // The broker back, the second round settles too.
        cluster.broker_up(2).unwrap();
        assert!(settles_within(
            acknowledged(&producer, second),
            Duration::from_secs(60)
        ));
    }
}
