//! Kafka as input and output of `vigil run`: the consumer that feeds the
//! pipeline ([`source`]), the producer of violations and dead letters
//! ([`outputs`]), the repartition topic between two stages
//! ([`repartition`]) and the state handover ([`handover`]), with what they
//! share: client configuration, the
//! classification of topics into CDC and cache streams, and librdkafka's
//! logs routed to `tracing`.

pub mod avro;
pub mod handover;
pub mod outputs;
pub mod repartition;
pub mod source;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message, ToBytes};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use regex::Regex;

use crate::config::{Config, InputsConfig};
use crate::ingest::Stream;

/// How long a sender waits for deliveries when librdkafka's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

/// Hands a record to librdkafka, waiting for deliveries to make room while
/// its queue is full.
pub fn send_waiting<C, K, P>(
    producer: &ThreadedProducer<C>,
    record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> KafkaResult<()>
where
    C: ProducerContext + 'static,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    send_unless(producer, record, &AtomicBool::new(false)).map_err(|(e, _)| e)
}

/// [`send_waiting`], unless `give_up` is set while the queue is full; a
/// record not handed over comes back with the error, as from
/// [`ThreadedProducer::send`].
#[allow(clippy::result_large_err, clippy::type_complexity)]
fn send_unless<'a, C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    give_up: &AtomicBool,
) -> Result<(), (KafkaError, BaseRecord<'a, K, P, C::DeliveryOpaque>)>
where
    C: ProducerContext + 'static,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if !give_up.load(Ordering::Relaxed) =>
            {
                record = back;
                let _ = producer.flush(QUEUE_FULL_WAIT);
            }
            sent => return sent,
        }
    }
}

/// A client configuration from `[kafka]`, with vigil's defaults for what
/// the user did not set.
pub fn client_config(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &config.kafka {
        c.set(k, &v.0);
    }
    c.set_log_level(RDKafkaLogLevel::Info);
    c
}

/// A message's headers, copied.
pub fn owned_headers(msg: &impl Message) -> Vec<(String, Option<Vec<u8>>)> {
    msg.headers()
        .map(|h| {
            h.iter()
                .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends a librdkafka log line to `tracing` at the matching level.
pub fn log_to_tracing(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// A client context that keeps the latest error librdkafka reported (a
/// refused connection, a certificate that does not verify, a failed SASL
/// handshake), to say why no broker answered.
#[derive(Default)]
struct LatestError(Mutex<Option<String>>);

impl ClientContext for LatestError {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error");
        if let Ok(mut latest) = self.0.lock() {
            *latest = Some(reason.to_string());
        }
    }
}

impl ConsumerContext for LatestError {}

/// Fails with [`KafkaSetupError::Unreachable`] unless a broker of `[kafka]`
/// answers a metadata request within `timeout`, naming librdkafka's latest
/// error (such as `certificate verify failed`): a wrong address, CA or
/// password is reported at once instead of retried forever.
pub fn reach_brokers(config: &Config, timeout: Duration) -> Result<(), KafkaSetupError> {
    let client: BaseConsumer<LatestError> = client_config(config, &[])
        .create_with_context(LatestError::default())
        .map_err(|source| KafkaSetupError::Client {
            what: "client",
            source,
        })?;
    // Asked a second at a time, serving the client's events in between so
    // that its error callback sees why the brokers do not answer.
    let deadline = Instant::now() + timeout;
    let e = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let asked = client.fetch_metadata(None, left.min(Duration::from_secs(1)));
        let _ = client.poll(Duration::ZERO);
        match asked {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => break e,
            Err(_) => {}
        }
    };
    let latest = client.context().0.lock().ok().and_then(|l| l.clone());
    Err(KafkaSetupError::Unreachable {
        servers: config
            .kafka
            .get("bootstrap.servers")
            .map_or_else(String::new, |v| v.0.clone()),
        seconds: timeout.as_secs_f64(),
        reason: latest.unwrap_or_else(|| e.to_string()),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error(
        "cannot reach the Kafka brokers {servers} within {seconds}s (--broker-timeout): {reason}"
    )]
    Unreachable {
        servers: String,
        seconds: f64,
        reason: String,
    },
    #[error("invalid topic pattern {pattern:?} in inputs.{field}: {source}")]
    Pattern {
        field: &'static str,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("cannot create the Kafka {what}: {source}")]
    Client {
        what: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "the repartition topic {topic} does not exist: create it with as many partitions as \
         stage two may have instances (inputs.repartition_topic)"
    )]
    NoRepartitionTopic { topic: String },
    #[error("cannot write events in Avro: {0}")]
    Avro(#[from] avro::AvroOutputError),
}

/// Which stream each consumed topic belongs to: exact names from
/// `inputs.cdc_topics`, `inputs.cache_topics` and
/// `inputs.transaction_topics`, then their `^` patterns.
#[derive(Debug)]
pub struct TopicKinds {
    exact: HashMap<String, Stream>,
    patterns: Vec<(Regex, Stream)>,
    subscriptions: Vec<String>,
}

impl TopicKinds {
    pub fn from_config(inputs: &InputsConfig) -> Result<Self, KafkaSetupError> {
        let mut kinds = TopicKinds {
            exact: HashMap::new(),
            patterns: Vec::new(),
            subscriptions: Vec::new(),
        };
        let lists = [
            ("cdc_topics", &inputs.cdc_topics, Stream::Cdc),
            ("cache_topics", &inputs.cache_topics, Stream::Cache),
            (
                "transaction_topics",
                &inputs.transaction_topics,
                Stream::Cdc,
            ),
        ];
        for (field, topics, stream) in lists {
            for topic in topics {
                if topic.starts_with('^') {
                    let re = Regex::new(topic).map_err(|source| KafkaSetupError::Pattern {
                        field,
                        pattern: topic.clone(),
                        source,
                    })?;
                    kinds.patterns.push((re, stream));
                } else {
                    kinds.exact.insert(topic.clone(), stream);
                }
                // A topic named in two lists is subscribed to once.
                if !kinds.subscriptions.contains(topic) {
                    kinds.subscriptions.push(topic.clone());
                }
            }
        }
        Ok(kinds)
    }

    /// The stream of a topic; `None` for a topic no setting names (which the
    /// subscription cannot deliver).
    pub fn stream_of(&self, topic: &str) -> Option<Stream> {
        self.exact.get(topic).copied().or_else(|| {
            self.patterns
                .iter()
                .find(|(re, _)| re.is_match(topic))
                .map(|(_, s)| *s)
        })
    }

    /// What to subscribe to, as librdkafka takes it (names and `^` patterns).
    pub fn subscriptions(&self) -> Vec<&str> {
        self.subscriptions.iter().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_classified_by_name_then_pattern() {
        let inputs = InputsConfig {
            cdc_topics: vec!["^dbserver1\\..*".into(), "orders".into()],
            cache_topics: vec!["cache-invalidation".into()],
            ..InputsConfig::default()
        };
        let kinds = TopicKinds::from_config(&inputs).unwrap();
        assert_eq!(kinds.stream_of("dbserver1.public.users"), Some(Stream::Cdc));
        assert_eq!(kinds.stream_of("orders"), Some(Stream::Cdc));
        assert_eq!(kinds.stream_of("cache-invalidation"), Some(Stream::Cache));
        assert_eq!(kinds.stream_of("other"), None);
        assert_eq!(kinds.subscriptions().len(), 3);
        let bad = InputsConfig {
            cdc_topics: vec!["^(".into()],
            ..InputsConfig::default()
        };
        assert!(
            TopicKinds::from_config(&bad)
                .unwrap_err()
                .to_string()
                .contains("inputs.cdc_topics")
        );
    }
}
