//! The Kafka consumer of `vigil run`: one consumer in the group, subscribed
//! to the CDC and cache topics, decoding and mapping on its own thread and
//! feeding the pipeline in per-partition batches. In stage two of two it
//! reads the repartition topic instead: key-level items, and the stage-one
//! producers' marks as its partitions' event time (see [`super::repartition`]).
//!
//! - **Positions**: on assignment, a partition resumes from the offset that
//!   vigil's state store holds for it (committed with the state it produced),
//!   else from Kafka's committed offset, else from `auto.offset.reset`.
//! - **Rebalances**: before partitions are released, their pending records
//!   are handed over, a checkpoint is committed (state and positions), and
//!   their offsets are committed to Kafka, so the next owner resumes exactly
//!   where this one stopped.
//! - **Back-pressure**: when the pipeline is full the consumer pauses its
//!   partitions instead of buffering, and keeps polling so that it stays in
//!   the group; it resumes once the pipeline has room.
//! - **Idleness**: librdkafka's statistics tell whether a partition is read
//!   to its end; only such a partition may stop holding the watermark back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use hashbrown::Equivalent;
use hashbrown::hash_map::EntryRef;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::handover::Changelog;
use super::repartition::{self, Marks};
use super::{KafkaSetupError, TopicKinds, client_config, log_to_tracing, owned_headers};
use crate::config::{Config, Guarantee};
use crate::dead_letter::{DeadLetter, KafkaRecord, Origin, Reason, RecordError};
use crate::ingest::{Ingest, Payload, RawInput, Record, Stream};
use crate::model::{Name, Provenance};
use crate::pipeline::{KeyedItem, PartitionBatch, Position, Repartitioned, SourceMsg, Transfer};
use crate::state::{Cf, Store, codec};
use crate::telemetry::{PartitionsMeasured, RecordsRead, Stage, StageTimed, Stats};

/// How long `poll` waits when there is nothing to read.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How often partitions are checked for being read to their end.
const CAUGHT_UP_EVERY: Duration = Duration::from_millis(200);
/// Messages waiting for room in the pipeline before reading pauses.
const PAUSE_AFTER: usize = 8;
/// How long a rebalance waits for the checkpoint of the partitions it
/// releases.
const REBALANCE_COMMIT_WAIT: Duration = Duration::from_secs(60);
/// How long a stopping source polls for the group to take its partitions
/// back before it hangs up anyway.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

/// Consumer defaults, with the stage's assignor ([`assignor`]); `[kafka]`
/// overrides them.
const CONSUMER_DEFAULTS: [(&str, &str); 4] = [
    ("enable.auto.commit", "false"),
    ("auto.offset.reset", "earliest"),
    ("statistics.interval.ms", "1000"),
    ("isolation.level", "read_committed"),
];

/// The `partition.assignment.strategy` of `stage` unless `[kafka]` names
/// one. `range` where state is handed over by partition number across
/// several topics (one process with co-partitioned inputs, stage one): it
/// gives an instance the same partition numbers of every topic. Stage two
/// reads one topic, so `cooperative-sticky`, which moves only the
/// partitions that change hands; and on tansu 0.6.0 a member that survives
/// another's expired session rejoins with the same `range` metadata and is
/// handed its old assignment again, so the expired member's partitions
/// stay unowned (DEVELOPERS.md, "A killed member's partitions on tansu").
fn assignor(stage: repartition::Stage) -> &'static str {
    match stage {
        repartition::Stage::Both | repartition::Stage::One => "range",
        repartition::Stage::Two => "cooperative-sticky",
    }
}

/// A partition's key in [`Shared::parts`], borrowed: it hashes as the
/// key it stands for.
#[derive(Hash)]
struct PartOf<'a>(&'a str, i32);

impl Equivalent<(Name, i32)> for PartOf<'_> {
    fn equivalent(&self, key: &(Name, i32)) -> bool {
        self.1 == key.1 && self.0 == key.0.as_str()
    }
}

/// The key a borrowed one stands for, made when a partition is first seen.
impl From<&PartOf<'_>> for (Name, i32) {
    fn from(key: &PartOf<'_>) -> Self {
        (Name::new(key.0), key.1)
    }
}

/// Read state of one topic partition.
struct Part {
    /// Index of the partition in the pipeline's watermark.
    index: usize,
    topic: Name,
    stream: Option<Stream>,
    assigned: bool,
    records: Vec<Record>,
    /// Stage two: the key-level items read.
    keyed: Vec<KeyedItem>,
    /// Stage two: the stage-one producers' marks.
    marks: Marks,
    dead: Vec<DeadLetter>,
    read: u64,
    /// Offset after the last record consumed.
    next_offset: Option<i64>,
    caught_up: bool,
}

impl Part {
    /// Stage two: takes a repartition record, a key-level item or a
    /// producer's mark (which moves the partition's event time when it moves
    /// the least mark).
    fn transfer(&mut self, value: &[u8], producer_idle: Duration) -> Result<(), RecordError> {
        match Transfer::decode(value) {
            Ok(Transfer::Item(item)) => self.keyed.push(item),
            Ok(Transfer::Mark {
                producer,
                watermark,
            }) => {
                let now = Instant::now();
                if let Some(ts) = self.marks.observe(producer, watermark, now, producer_idle) {
                    self.records.push(Record::Tick(ts));
                }
            }
            Err(e) => return Err(RecordError::new(Reason::UnknownFormat, e.to_string())),
        }
        Ok(())
    }
}

/// The broker's view of a partition, from librdkafka's statistics.
#[derive(Debug, Clone, Copy)]
struct BrokerView {
    /// The end the consumer reads to: with `isolation.level =
    /// read_committed` the last stable offset (records of a transaction
    /// still open wait behind it), else the high watermark.
    end_offset: i64,
    /// The partition's first offset (negative: unknown).
    start_offset: i64,
    /// The next offset to fetch: past the transaction markers, which take
    /// offsets but are not records.
    fetch_offset: i64,
    /// Records fetched and not yet consumed, of every partition: librdkafka
    /// forwards each partition's fetch queue to the consumer's queue, and
    /// its statistics count the queue a partition's is forwarded to.
    queued: i64,
    active: bool,
}

impl BrokerView {
    /// Where reading stands, `next_offset` after the last record consumed:
    /// the fetch position once nothing fetched waits to be consumed (the
    /// marker that ends a transaction follows its last record, and only
    /// the fetch position moves past it).
    fn position(&self, next_offset: Option<i64>) -> Option<i64> {
        let fetched = (self.fetch_offset >= 0 && self.queued == 0).then_some(self.fetch_offset);
        next_offset.max(fetched)
    }

    /// Whether a partition read up to `next_offset` (`None`: nothing
    /// consumed) is read to its end: consumed to it, or holding no record.
    /// Records of the other partitions waiting in the consumer's queue do
    /// not keep it from its end (with them counted, under load no partition
    /// was ever read to its end, and an empty one held the watermark back
    /// until the next statistics showed the queue empty). An unknown end
    /// (negative: the leader is away) is not an end reached.
    fn caught_up(&self, next_offset: Option<i64>) -> bool {
        // An unknown start (negative) is below any known end.
        let holds_none = next_offset.is_none() && self.start_offset >= self.end_offset;
        self.active
            && self.end_offset >= 0
            && (holds_none || self.position(next_offset) >= Some(self.end_offset))
    }
}

/// State shared by the poll loop and the callbacks librdkafka runs inside
/// `poll` (rebalances, statistics): all on the consumer thread.
struct Shared {
    parts: hashbrown::HashMap<(Name, i32), Part>,
    next_index: usize,
    /// Messages the pipeline had no room for yet.
    outbox: VecDeque<SourceMsg>,
    /// `None` once the source has stopped.
    tx: Option<Sender<SourceMsg>>,
    views: HashMap<(String, i32), BrokerView>,
    paused: bool,
    /// Scopes (partition numbers) whose state this instance holds.
    owned: BTreeSet<i32>,
}

/// The consumer's context: rebalance, statistics and log callbacks.
pub struct SourceContext {
    shared: Mutex<Shared>,
    store: Arc<dyn Store>,
    kinds: TopicKinds,
    stats: Arc<Stats>,
    guarantee: Guarantee,
    /// Where state is handed over from, with `inputs.co_partitioned`.
    changelog: Option<Changelog>,
}

pub type VigilConsumer = BaseConsumer<SourceContext>;

/// Why a consumer stopped reading for good.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Another consumer joined the group with this instance's
    /// `group.instance.id`, and the broker fenced this one out.
    #[error(
        "fenced out of consumer group {group}: another instance joined it with the same \
         group.instance.id \"{instance}\"; each instance needs an id of its own \
         (kafka.\"group.instance.id\")"
    )]
    Fenced { group: String, instance: String },
    /// librdkafka raised a fatal error: the consumer cannot go on.
    #[error("the Kafka consumer of group {group} failed for good: {reason}")]
    Fatal { group: String, reason: String },
}

impl SourceContext {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // Only the consumer thread takes the lock; a panic there ends the
        // source, so a poisoned lock is never used afterwards in practice.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends everything waiting in the outbox; `block` waits for room (used
    /// in rebalances, which must hand everything over before returning).
    fn drain(&self, shared: &mut Shared, block: bool) -> bool {
        let Some(tx) = shared.tx.clone() else {
            shared.outbox.clear();
            return true;
        };
        while let Some(msg) = shared.outbox.pop_front() {
            let sent = if block {
                tx.send(msg).map_err(|e| TrySendError::Disconnected(e.0))
            } else {
                tx.try_send(msg)
            };
            match sent {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    shared.outbox.push_front(msg);
                    return false;
                }
                Err(TrySendError::Disconnected(_)) => {
                    // The pipeline stopped; its error is reported by the run.
                    shared.outbox.clear();
                    shared.tx = None;
                    return true;
                }
            }
        }
        true
    }

    /// Moves a partition's pending records into the outbox.
    /// Takes a partition's pending records as a batch.
    fn take(&self, part: &mut Part, partition: i32) -> Option<PartitionBatch> {
        if part.read == 0 {
            return None;
        }
        self.stats.emit(RecordsRead {
            input: &part.topic,
            count: std::mem::take(&mut part.read),
        });
        Some(PartitionBatch {
            partition: part.index,
            records: std::mem::take(&mut part.records),
            keyed: (!part.keyed.is_empty()).then(|| Repartitioned {
                scope: partition,
                items: std::mem::take(&mut part.keyed),
            }),
            dead: std::mem::take(&mut part.dead),
            position: part.next_offset.map(|next_offset| Position {
                source: part.topic.clone(),
                partition,
                next_offset,
                event_time: None,
            }),
        })
    }

    /// Moves the pending records of the partitions `keys` selects into the
    /// outbox, as one message.
    fn seal(&self, shared: &mut Shared, keys: impl Fn(&(Name, i32)) -> bool) {
        let batches: Vec<PartitionBatch> = shared
            .parts
            .iter_mut()
            .filter(|(key, _)| keys(key))
            .filter_map(|(key, part)| self.take(part, key.1))
            .collect();
        if !batches.is_empty() {
            shared.outbox.push_back(SourceMsg::Batch(batches));
        }
    }

    fn seal_all(&self, shared: &mut Shared) {
        self.seal(shared, |_| true);
    }

    /// The partition `partition` of `topic`, found by one lookup without
    /// copying the topic (once per message); added with the next index if
    /// new.
    fn part<'a>(&self, shared: &'a mut Shared, topic: &str, partition: i32) -> &'a mut Part {
        match shared.parts.entry_ref(&PartOf(topic, partition)) {
            EntryRef::Occupied(part) => part.into_mut(),
            EntryRef::Vacant(place) => {
                let index = shared.next_index;
                shared.next_index += 1;
                place.insert(Part {
                    index,
                    topic: Name::new(topic),
                    stream: self.kinds.stream_of(topic),
                    assigned: false,
                    records: Vec::new(),
                    keyed: Vec::new(),
                    marks: Marks::default(),
                    dead: Vec::new(),
                    read: 0,
                    next_offset: None,
                    caught_up: false,
                })
            }
        }
    }

    /// With a changelog: forgets the scopes this instance no longer holds,
    /// and restores from the changelog those it did not hold, before any of
    /// their records is read.
    fn hand_over(&self, shared: &mut Shared, consumer: &VigilConsumer, tpl: &TopicPartitionList) {
        let Some(changelog) = &self.changelog else {
            return;
        };
        let assigned: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let released: Vec<i32> = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => Vec::new(),
            _ => shared.owned.difference(&assigned).copied().collect(),
        };
        if !released.is_empty() {
            tracing::info!(scopes = ?released, "state of released partitions forgotten");
            shared.owned.retain(|s| !released.contains(s));
            shared
                .outbox
                .push_back(SourceMsg::Release { scopes: released });
        }
        let new: Vec<i32> = assigned.difference(&shared.owned).copied().collect();
        let mut loaded = Vec::new();
        for scope in new {
            let started = Instant::now();
            match changelog.restore(&*self.store, scope) {
                Ok(records) => {
                    tracing::info!(
                        scope,
                        records,
                        took_ms = started.elapsed().as_millis() as u64,
                        changelog = changelog.topic(),
                        "state of partition restored"
                    );
                    loaded.push(scope);
                }
                Err(e) => tracing::error!(
                    scope,
                    error = %e,
                    "cannot restore the state of an assigned partition; it starts empty"
                ),
            }
            shared.owned.insert(scope);
        }
        if !loaded.is_empty() {
            shared.outbox.push_back(SourceMsg::Load { scopes: loaded });
        }
    }

    fn on_assign(&self, consumer: &VigilConsumer, tpl: &mut TopicPartitionList) {
        let mut shared = self.shared();
        self.hand_over(&mut shared, consumer, tpl);
        let mut resumed = Vec::new();
        let mut assigned = Vec::new();
        for elem in tpl.elements() {
            let (topic, partition) = (elem.topic().to_string(), elem.partition());
            let value = self
                .store
                .get(Cf::Offsets, &codec::offset_key(&topic, partition))
                .ok()
                .flatten();
            let stored = value.as_deref().and_then(codec::parse_offset_value);
            let event_time = value.as_deref().and_then(codec::parse_offset_event_time);
            if let Some(offset) = stored {
                resumed.push((topic.clone(), partition, offset));
            }
            let part = self.part(&mut shared, &topic, partition);
            part.assigned = true;
            part.caught_up = false;
            part.next_offset = stored;
            assigned.push((part.index, event_time));
        }
        if self.changelog.is_none() {
            // What this instance holds after the rebalance: with incremental
            // assignment `tpl` holds only the partitions added.
            let held = shared.parts.values().filter(|p| p.assigned).count();
            warn_if_shared(consumer, &self.kinds, held);
        }
        shared.outbox.push_back(SourceMsg::Assigned {
            partitions: assigned,
        });
        self.publish_lags(&shared);
        for (topic, partition, offset) in &resumed {
            if let Err(e) = tpl.set_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(topic, partition, offset, error = %e, "cannot resume from vigil's stored offset");
            }
        }
        self.drain(&mut shared, true);
        drop(shared);
        tracing::info!(
            partitions = tpl.count(),
            resumed_from_state = resumed.len(),
            "partitions assigned"
        );
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot take the assigned partitions");
            return;
        }
        self.commit_resumed(consumer, &resumed);
    }

    /// Commits to Kafka the offsets resumed from vigil's state. Kafka's
    /// committed offsets can be behind the state (an instance killed
    /// between the state's commit and Kafka's), and a partition with
    /// nothing new to read would keep the stale offset until its next
    /// record: the group would look stalled to anything that follows its
    /// offsets (lag alerts, a producer paced by them), for good when that
    /// producer waits for the offsets to move before writing more.
    fn commit_resumed(&self, consumer: &VigilConsumer, resumed: &[(String, i32, i64)]) {
        if self.guarantee != Guarantee::AtLeastOnce || resumed.is_empty() {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, offset) in resumed {
            let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, "cannot commit the resumed offsets to Kafka (vigil's own state has them)");
        }
    }

    fn on_revoke(&self, consumer: &VigilConsumer, tpl: &TopicPartitionList) {
        let mut shared = self.shared();
        let mut offsets = TopicPartitionList::new();
        let elements = tpl.elements();
        let mut ended = Vec::new();
        self.seal(&mut shared, |(topic, partition)| {
            elements
                .iter()
                .any(|e| e.topic() == topic.as_str() && e.partition() == *partition)
        });
        for elem in &elements {
            if let Some(part) = shared
                .parts
                .get_mut(&PartOf(elem.topic(), elem.partition()))
            {
                part.assigned = false;
                if let Some(next) = part.next_offset {
                    let _ = offsets.add_partition_offset(
                        elem.topic(),
                        elem.partition(),
                        Offset::Offset(next),
                    );
                }
                ended.push(part.index);
            }
        }
        self.publish_lags(&shared);
        shared
            .outbox
            .push_back(SourceMsg::End { partitions: ended });
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        shared
            .outbox
            .push_back(SourceMsg::Checkpoint { done: done_tx });
        self.drain(&mut shared, true);
        let live = shared.tx.is_some();
        drop(shared);
        if live {
            match done_rx.recv_timeout(REBALANCE_COMMIT_WAIT) {
                Ok(()) => {
                    if self.guarantee == Guarantee::AtLeastOnce
                        && offsets.count() > 0
                        && let Err(e) = consumer.commit(&offsets, CommitMode::Sync)
                    {
                        tracing::warn!(error = %e, "cannot commit offsets of released partitions to Kafka (vigil's own state has them)");
                    }
                }
                Err(_) => tracing::error!(
                    "the checkpoint of the released partitions did not commit in time; their next owner will read again what was not committed"
                ),
            }
        }
        tracing::info!(partitions = tpl.count(), "partitions released");
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        if cooperative && self.changelog.is_some() {
            let mut shared = self.shared();
            let scopes: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(scopes = ?scopes, "state of released partitions forgotten");
            shared.owned.retain(|s| !scopes.contains(s));
            shared.outbox.push_back(SourceMsg::Release { scopes });
            self.drain(&mut shared, true);
        }
        let result = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot release the revoked partitions");
        }
    }

    /// Publishes the assigned partitions and how far each is behind its
    /// end, as far as the broker's statistics tell; released partitions are
    /// left out.
    fn publish_lags(&self, shared: &Shared) {
        let assigned = shared.parts.values().filter(|p| p.assigned).count();
        let lags = shared
            .parts
            .iter()
            .filter(|(_, part)| part.assigned)
            .filter_map(|((topic, partition), part)| {
                let view = shared.views.get(&(topic.to_string(), *partition))?;
                let position = part
                    .next_offset
                    .or((view.fetch_offset >= 0).then_some(view.fetch_offset))?;
                let position = view.position(Some(position))?;
                (view.end_offset >= 0).then(|| {
                    (
                        (topic.to_string(), *partition),
                        (view.end_offset - position).max(0),
                    )
                })
            })
            .collect();
        self.stats.emit(PartitionsMeasured { assigned, lags });
    }

    /// Tells the pipeline which partitions are read to their end.
    fn update_caught_up(&self) {
        let mut shared = self.shared();
        let mut changes = Vec::new();
        for ((topic, partition), part) in &shared.parts {
            if !part.assigned {
                continue;
            }
            let caught_up = shared
                .views
                .get(&(topic.to_string(), *partition))
                .is_some_and(|v| v.caught_up(part.next_offset));
            if caught_up != part.caught_up {
                changes.push(((topic.clone(), *partition), part.index, caught_up));
            }
        }
        for (key, index, caught_up) in changes {
            if let Some(part) = shared.parts.get_mut(&key) {
                part.caught_up = caught_up;
            }
            shared.outbox.push_back(SourceMsg::CaughtUp {
                partition: index,
                caught_up,
            });
        }
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        let mut shared = self.shared();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let view = BrokerView {
                    end_offset: p.ls_offset,
                    start_offset: p.lo_offset,
                    fetch_offset: p.next_offset,
                    queued: p.fetchq_cnt,
                    active: p.fetch_state == "active",
                };
                shared.views.insert((topic.clone(), *partition), view);
            }
        }
        self.publish_lags(&shared);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka consumer error (librdkafka retries)");
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                tracing::error!(error = ?other, "rebalance failed; releasing every partition");
                self.on_revoke(consumer, tpl);
            }
        }
    }
}

/// The consumer, ready to run on its own thread.
pub struct KafkaSource {
    consumer: Arc<VigilConsumer>,
    stage: repartition::Stage,
    /// Stage two: how long a stage-one producer may be silent before it no
    /// longer holds a partition's event time back: `detect.idle_timeout`,
    /// plus `state.checkpoint_interval` with exactly-once, where its marks
    /// come only as often as it commits a transaction.
    producer_idle: Duration,
    group: String,
    /// `group.instance.id`, with static membership.
    instance: Option<String>,
    batch_size: usize,
    /// Longest a record waits in a batch that is not full.
    linger: Duration,
}

impl KafkaSource {
    /// Creates the consumer of `stage` and subscribes it; nothing is read
    /// until [`run`].
    ///
    /// [`run`]: KafkaSource::run
    pub fn new(
        config: &Config,
        stage: repartition::Stage,
        store: Arc<dyn Store>,
        stats: Arc<Stats>,
        tx: Sender<SourceMsg>,
    ) -> Result<Self, KafkaSetupError> {
        let kinds = TopicKinds::from_config(&config.inputs)?;
        let topics: Vec<String> = match stage {
            repartition::Stage::Two => vec![config.inputs.repartition_topic.clone()],
            repartition::Stage::Both | repartition::Stage::One => kinds
                .subscriptions()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let group = stage.group_id(config);
        let context = SourceContext {
            shared: Mutex::new(Shared {
                parts: hashbrown::HashMap::new(),
                next_index: 0,
                outbox: VecDeque::new(),
                tx: Some(tx),
                views: HashMap::new(),
                paused: false,
                owned: BTreeSet::new(),
            }),
            store,
            kinds,
            stats,
            guarantee: config.processing.guarantee,
            changelog: Changelog::of_stage(config, stage),
        };
        let defaults = [
            &CONSUMER_DEFAULTS[..],
            &[("partition.assignment.strategy", assignor(stage))],
        ]
        .concat();
        let mut client = client_config(config, &defaults);
        client.set("group.id", &group);
        let consumer: VigilConsumer =
            client
                .create_with_context(context)
                .map_err(|source| KafkaSetupError::Client {
                    what: "consumer",
                    source,
                })?;
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|source| KafkaSetupError::Client {
                what: "subscription",
                source,
            })?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            stage,
            producer_idle: match config.processing.guarantee {
                Guarantee::AtLeastOnce => config.detect.idle_timeout.0,
                Guarantee::ExactlyOnce => {
                    config.detect.idle_timeout.0 + config.state.checkpoint_interval.0
                }
            },
            group,
            instance: config.kafka.get("group.instance.id").map(|v| v.0.clone()),
            batch_size: config.pipeline.batch_size,
            linger: config.pipeline.linger.0,
        })
    }

    /// The consumer, for committing offsets and transactions from the sink.
    pub fn consumer(&self) -> Arc<VigilConsumer> {
        Arc::clone(&self.consumer)
    }

    /// Reads until `stop` is set, then hands over what it holds and hangs up
    /// (the pipeline then commits a last checkpoint). A fatal consumer error
    /// (this instance fenced out of its group, say) ends the reading too,
    /// what was read is handed over, and the error is returned.
    pub fn run(&self, ingest: &Ingest, stop: &AtomicBool) -> Result<(), SourceError> {
        let ctx = self.consumer.context();
        let mut last_check = Instant::now();
        let mut last_seal = Instant::now();
        let mut wait = Duration::ZERO;
        let mut failed = None;
        while !stop.load(Ordering::Relaxed) {
            // The clock is read once a message after it is ingested (that
            // reading times the ingest and the seals and checks below).
            let now = match self.consumer.poll(wait) {
                Some(Ok(msg)) => {
                    let started = Instant::now();
                    self.on_message(ctx, ingest, &msg);
                    let now = Instant::now();
                    ctx.stats.emit(StageTimed(Stage::Ingest, now - started));
                    wait = Duration::ZERO;
                    now
                }
                Some(Err(e)) => {
                    failed = self.fatal_error();
                    if failed.is_some() {
                        break;
                    }
                    tracing::warn!(error = %e, "Kafka consumer error (librdkafka retries)");
                    wait = POLL_WAIT;
                    Instant::now()
                }
                None => {
                    // Nothing more to read now: send what is there.
                    ctx.seal_all(&mut ctx.shared());
                    last_seal = Instant::now();
                    wait = POLL_WAIT.min(self.linger);
                    last_seal
                }
            };
            if now - last_seal >= self.linger {
                ctx.seal_all(&mut ctx.shared());
                last_seal = now;
            }
            if now - last_check >= CAUGHT_UP_EVERY {
                failed = self.fatal_error();
                if failed.is_some() {
                    break;
                }
                ctx.update_caught_up();
                last_check = now;
            }
            self.deliver(ctx);
        }
        if failed.is_none() {
            self.leave_group(ctx, ingest);
        }
        let mut shared = ctx.shared();
        ctx.seal_all(&mut shared);
        ctx.drain(&mut shared, true);
        shared.tx = None;
        failed.map_or(Ok(()), Err)
    }

    /// librdkafka's fatal error, if one was raised: the consumer is
    /// unusable, not retrying.
    fn fatal_error(&self) -> Option<SourceError> {
        let (code, reason) = self.consumer.client().fatal_error()?;
        let group = self.group.clone();
        tracing::error!(%code, reason, "fatal Kafka consumer error: stopping");
        Some(match (code, self.instance.clone()) {
            (RDKafkaErrorCode::FencedInstanceId, Some(instance)) => {
                SourceError::Fenced { group, instance }
            }
            _ => SourceError::Fatal { group, reason },
        })
    }

    /// Leaves the consumer group while still polling, so that the revoke of
    /// the partitions is handled (checkpoint, unassign) before the consumer
    /// is closed: answering a revoke raised by the close itself can hang
    /// forever in librdkafka (confluentinc/librdkafka#4884).
    fn leave_group(&self, ctx: &SourceContext, ingest: &Ingest) {
        self.consumer.unsubscribe();
        let until = Instant::now() + LEAVE_WAIT;
        while Instant::now() < until && self.consumer.assignment().is_ok_and(|a| a.count() > 0) {
            if let Some(Ok(msg)) = self.consumer.poll(POLL_WAIT) {
                self.on_message(ctx, ingest, &msg);
            }
        }
    }

    /// Sends what the pipeline can take; pauses reading while it cannot.
    fn deliver(&self, ctx: &SourceContext) {
        let mut shared = ctx.shared();
        let all_sent = ctx.drain(&mut shared, false);
        // Pausing makes librdkafka drop what it prefetched: only when the
        // pipeline stays full, not for a moment's burst.
        let full = shared.outbox.len() > PAUSE_AFTER;
        if (all_sent && shared.paused) || (full && !shared.paused) {
            let assignment = self.consumer.assignment().unwrap_or_default();
            let result = if all_sent {
                self.consumer.resume(&assignment)
            } else {
                tracing::debug!("pipeline full: pausing the consumer");
                self.consumer.pause(&assignment)
            };
            match result {
                Ok(()) => shared.paused = !all_sent,
                Err(e) => tracing::warn!(error = %e, "cannot pause or resume the consumer"),
            }
        }
    }

    fn on_message(&self, ctx: &SourceContext, ingest: &Ingest, msg: &BorrowedMessage<'_>) {
        let mut shared = ctx.shared();
        let part = ctx.part(&mut shared, msg.topic(), msg.partition());
        let provenance = Provenance {
            topic: part.topic.clone(),
            partition: msg.partition(),
            offset: msg.offset(),
            from_file: false,
        };
        let timestamp_ms = msg.timestamp().to_millis();
        let result = match part.stream {
            _ if self.stage == repartition::Stage::Two => {
                part.transfer(msg.payload().unwrap_or_default(), self.producer_idle)
            }
            Some(stream) => {
                let input = RawInput {
                    stream,
                    key: msg.key(),
                    value: msg.payload().map(Payload::Bytes),
                    timestamp_ms,
                };
                ingest.ingest(input, &provenance, &mut part.records)
            }
            None => Err(RecordError::new(
                Reason::UnknownFormat,
                format!(
                    "topic {} is not in inputs.cdc_topics or inputs.cache_topics",
                    msg.topic()
                ),
            )),
        };
        if let Err(error) = result {
            part.dead.push(DeadLetter {
                error,
                origin: Origin::Kafka(kafka_record(msg)),
            });
        }
        part.read += 1;
        part.next_offset = Some(msg.offset() + 1);
        if part.records.len() >= self.batch_size
            || part.keyed.len() >= self.batch_size
            || part.dead.len() >= self.batch_size
        {
            let key = (part.topic.clone(), msg.partition());
            ctx.seal(&mut shared, |k| *k == key);
        }
    }
}

/// Warns when this instance holds, after a rebalance, only `held` of its
/// input topics' partitions while state is not handed over
/// (`inputs.co_partitioned = false`): another instance shares the group,
/// and keys whose records move between instances lose their state.
fn warn_if_shared(consumer: &VigilConsumer, kinds: &TopicKinds, held: usize) {
    let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_secs(5)) else {
        return;
    };
    let total: usize = metadata
        .topics()
        .iter()
        .filter(|t| kinds.stream_of(t.name()).is_some())
        .map(|t| t.partitions().len())
        .sum();
    if held < total {
        tracing::warn!(
            assigned = held,
            partitions = total,
            "other instances share this consumer group, but inputs.co_partitioned is false: \
             state is not handed over between instances, so verdicts about keys whose records \
             move between them can be wrong (see inputs.co_partitioned)"
        );
    }
}

/// A consumed record, unchanged, for its dead letter.
fn kafka_record(msg: &BorrowedMessage<'_>) -> KafkaRecord {
    KafkaRecord {
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers: owned_headers(msg),
        timestamp_ms: msg.timestamp().to_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_ending_in_a_transaction_marker_is_read_to_its_end() {
        // Records at offsets 0..=9 committed by a transaction whose marker
        // takes offset 10: the end is 11, the last record consumed 9.
        let view = |fetch_offset, queued, end_offset| BrokerView {
            end_offset,
            start_offset: 0,
            fetch_offset,
            queued,
            active: true,
        };
        // The fetcher has passed the marker and nothing waits: read.
        assert!(view(11, 0, 11).caught_up(Some(10)));
        assert_eq!(view(11, 0, 11).position(Some(10)), Some(11));
        // Records fetched wait to be consumed: not yet.
        assert!(!view(11, 3, 11).caught_up(Some(7)));
        assert_eq!(view(11, 3, 11).position(Some(7)), Some(7));
        // A transaction still open wrote 11..=14 (the high watermark is
        // 15): read_committed, the end is the last stable offset, 11.
        assert!(view(11, 0, 11).caught_up(None));
        assert!(!view(5, 0, 11).caught_up(Some(5)));
        // An unknown end is not an end reached.
        assert!(!view(11, 0, -1).caught_up(Some(11)));
    }

    #[test]
    fn records_queued_for_other_partitions_do_not_keep_a_partition_from_its_end() {
        // The consumer's queue, shared by every partition, holds 117
        // records (the statistics give each partition that count).
        let view = |start_offset, fetch_offset, end_offset| BrokerView {
            end_offset,
            start_offset,
            fetch_offset,
            queued: 117,
            active: true,
        };
        // Consumed to the end.
        assert!(view(0, 20, 20).caught_up(Some(20)));
        // Nothing consumed, and nothing to consume: an empty partition, or
        // one whose records are all deleted.
        assert!(view(0, 0, 0).caught_up(None));
        assert!(view(30, 30, 30).caught_up(None));
        // Records fetched that may wait in the queue: not yet.
        assert!(!view(0, 20, 20).caught_up(Some(12)));
        assert!(!view(0, 20, 20).caught_up(None));
        // An unknown start says nothing.
        assert!(!view(-1, 0, 0).caught_up(None));
    }
}
