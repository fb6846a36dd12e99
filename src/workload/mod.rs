//! The synthetic workload behind `vigil gen`, the demo and the benchmarks:
//! CDC records and cache events of a simulated application, with faults
//! injected at configurable rates and the violations a correct engine must
//! report for them ([`Expected`]).
//!
//! The expected violations follow from how the workload is built, not from
//! the engine: each entity lives through *episodes* (a create, update or
//! delete, the invalidation of its keys, sometimes a fill), and an entity's
//! episodes are [`SPACING_MS`] apart, longer than a deadline plus a late
//! window, so that a fault in one episode cannot interact with another. Noise
//! that a correct engine must not report is added everywhere: redeliveries,
//! invalidations stamped before the change within the clock skew, cache
//! events out of order within the allowed lateness, wildcard and multi-key
//! invalidations, snapshot reads, tombstones and heartbeats.

pub mod avro;
pub mod encode;
pub mod protobuf;
pub mod rng;
pub mod storms;
#[cfg(test)]
mod testing;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::events::ViolationKind;
use crate::ingest::{Payload, RawInput, Stream};
use crate::model::{Millis, Op};
use crate::registry::SchemaKind;
use avro::AvroTable;
use encode::{
    CdcFormat, GenCacheEvent, GenChange, GenRow, GenTx, TsForm, TxForm, encode_cache, encode_change,
};
use protobuf::ProtoTable;
use rng::Rng;
use storms::{BaseRates, ExpectedStorm, Injection, StormSchedule, Traffic};

/// One schema of a table written in a schema registry's wire format: its
/// subject, id, text and kind.
#[derive(Debug, Clone)]
pub struct GenSchema {
    pub subject: String,
    /// The id records are framed with.
    pub id: u32,
    pub text: String,
    pub kind: SchemaKind,
}

impl GenSchema {
    /// The `part` (`value` or `key`) schema of `topic`, under the
    /// converters' default subject, `{topic}-{part}`.
    fn new(topic: &str, part: &str, id: u32, text: String, kind: SchemaKind) -> Self {
        GenSchema {
            subject: format!("{topic}-{part}"),
            id,
            text,
            kind,
        }
    }
}

/// The schemas of a table written in a schema registry's wire format.
#[derive(Debug, Clone)]
enum RegisteredTable {
    Avro(Box<AvroTable>),
    Protobuf(Box<ProtoTable>),
}

impl RegisteredTable {
    fn schemas(&self) -> [&GenSchema; 2] {
        match self {
            RegisteredTable::Avro(t) => [&t.value, &t.key],
            RegisteredTable::Protobuf(t) => [&t.value, &t.key],
        }
    }

    /// Frames records of `subject` with `id` (the registry's); false when
    /// the subject is not this table's.
    fn set_id(&mut self, subject: &str, id: u32) -> bool {
        let [value, key] = match self {
            RegisteredTable::Avro(t) => [&mut t.value, &mut t.key],
            RegisteredTable::Protobuf(t) => [&mut t.value, &mut t.key],
        };
        for schema in [value, key] {
            if schema.subject == subject {
                schema.id = id;
                return true;
            }
        }
        false
    }

    /// The Kafka key and value of a change.
    fn encode(&self, c: &GenChange) -> (Vec<u8>, Vec<u8>) {
        match self {
            RegisteredTable::Avro(t) => t.encode(c),
            RegisteredTable::Protobuf(t) => t.encode(c),
        }
    }
}

/// Deadline of the generated tables.
pub const DEADLINE_MS: i64 = 1_000;
/// Clock skew of the generated configuration.
pub const SKEW_MS: i64 = 100;
/// Late window of the generated configuration.
pub const LATE_WINDOW_MS: i64 = 500;
/// Allowed lateness of the generated configuration (cache events are out of
/// order by up to [`JITTER_MS`]).
pub const LATENESS_MS: i64 = 2_000;
/// Minimum time between two episodes of one entity.
pub const SPACING_MS: i64 = 3_000;
/// Default event time of the first episode (2023-11-14T22:13:20Z).
pub const START_MS: Millis = 1_700_000_000_000;
/// How far a cache event may be written after its timestamp.
pub const JITTER_MS: i64 = 300;

const P_DELETE: f64 = 0.08;
const P_FILL: f64 = 0.3;
const P_WILDCARD: f64 = 0.05;
const P_COMBINED: f64 = 0.3;
const P_UNVERSIONED_INVALIDATION: f64 = 0.1;
/// Average records per episode, to turn a record rate into an episode rate.
const RECORDS_PER_EPISODE: f64 = 2.6;
/// Debezium emits a heartbeat every this many CDC records here.
const HEARTBEAT_EVERY: u64 = 2_000;
/// Default number of Kafka partitions of each generated topic.
pub const PARTITIONS: i32 = 3;

/// Entity ids of the end markers' snapshot reads: rows no workload has.
const MARKER_IDS: u64 = 1 << 40;

/// A record that reports nothing and moves the partition's event time to
/// `ts_ms`: on a CDC topic the snapshot read of a row the workload does not
/// have, on the cache topic an invalidation of a key no change has.
pub fn end_marker(
    stream: Stream,
    topic: usize,
    partition: i32,
    ts_ms: i64,
) -> (Option<String>, String) {
    match stream {
        Stream::Cache => encode_cache(&GenCacheEvent {
            operation: "invalidate",
            keys: vec![format!("end-marker:{partition}")],
            service: "end-marker".into(),
            version: None,
            entity: None,
            ts_ms,
            ts_form: TsForm::Millis,
        }),
        Stream::Cdc => encode_change(
            CdcFormat::Debezium,
            &GenChange {
                table: 0,
                op: Op::Read,
                before: None,
                after: Some(GenRow {
                    id: MARKER_IDS + (topic as u64) * PARTITIONS as u64 + partition as u64,
                    version: 1,
                    note: "end marker",
                }),
                commit_ts_ms: ts_ms,
                position: 1,
                tx_id: 1,
                tx: None,
            },
        ),
    }
}
/// Topic of the Debezium heartbeats the generator writes.
const HEARTBEAT_TOPIC: &str = "__debezium-heartbeat.gen";
/// Topic of the transactions' BEGIN and END records.
pub const TX_TOPIC: &str = "gen.transaction";
/// Event time after its earliest record by which a transaction's END must
/// come, in the generated configuration.
pub const TX_TIMEOUT_MS: i64 = 5_000;
/// A table that the generated configuration does not map, which some
/// transactions' ENDs name (its changes are not written: their counts must
/// be ignored).
const UNMAPPED_TABLE: &str = "public.audit_log";
const P_UNMAPPED_IN_TX: f64 = 0.3;

/// Rates (0..1) of the transaction faults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TxFaults {
    /// An event is lost: a Debezium END announces one event more than was
    /// written; a Maxwell transaction skips an `xoffset` below one it
    /// writes (a transaction of too few rows for that is left whole).
    pub lost_event: f64,
    /// No END (no Maxwell commit row) is written.
    pub unterminated: f64,
}

impl TxFaults {
    /// The rates `vigil gen --transactions` uses unless told otherwise.
    pub const GEN: TxFaults = TxFaults {
        lost_event: 0.02,
        unterminated: 0.01,
    };
}

/// A transaction being written.
struct OpenTx {
    id: String,
    /// Episodes still to come in it.
    episodes_left: u64,
    /// Events written, per table.
    counts: BTreeMap<u32, u64>,
    last_ts: Millis,
    /// Whether a change of it misses an invalidation (late or not).
    missed: bool,
    /// Maxwell's way of writing it.
    maxwell: Option<MaxwellTx>,
}

/// What a Maxwell transaction keeps while it is written: its last row is
/// held until the next one comes (it takes the next `xoffset`) or the
/// transaction ends (it is the commit row).
struct MaxwellTx {
    xid: u64,
    /// The last row, and whether it may be delivered twice.
    held: Option<(GenChange, bool)>,
    next_xoffset: u64,
    /// The `xoffset` of a row to lose (skip), until a row written after it
    /// shows the gap.
    lose: Option<u64>,
    /// An `xoffset` was skipped.
    lost: bool,
    /// No commit row is to be written.
    unterminated: bool,
}

impl MaxwellTx {
    /// The place of the next row written: the commit row, or the next
    /// `xoffset` (past the one to lose: the row written shows the gap).
    fn place(&mut self, commit: bool) -> GenTx {
        let xoffset = (!commit).then(|| {
            if self
                .lose
                .take_if(|&mut lose| lose == self.next_xoffset)
                .is_some()
            {
                self.next_xoffset += 1;
                self.lost = true;
            }
            self.next_xoffset += 1;
            self.next_xoffset - 1
        });
        GenTx::Maxwell {
            xid: self.xid,
            xoffset,
        }
    }
}

/// Rates (0..1) of each injected fault, and of redeliveries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultRates {
    pub missing: f64,
    pub late: f64,
    pub stale_fill: f64,
    pub fill_after_delete: f64,
    pub regression: f64,
    pub gap: f64,
    pub conflict: f64,
    pub duplicate: f64,
}

impl FaultRates {
    /// The rates `vigil gen` uses unless told otherwise (its flags'
    /// defaults).
    pub const GEN: FaultRates = FaultRates {
        missing: 0.01,
        late: 0.01,
        stale_fill: 0.01,
        fill_after_delete: 0.05,
        regression: 0.005,
        gap: 0.005,
        conflict: 0.005,
        duplicate: 0.01,
    };
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Records to write (CDC and cache together).
    pub events: u64,
    /// Distinct entities (rows).
    pub keys: u64,
    pub tables: u32,
    /// Records per second of event time.
    pub rate: u64,
    pub format: CdcFormat,
    pub seed: u64,
    pub faults: FaultRates,
    /// Event time of the first episode (a live demo starts now).
    pub start_ms: Millis,
    /// Kafka partitions of each topic (records of an entity share one).
    pub partitions: i32,
    /// How the rate of the normal traffic varies.
    pub traffic: Traffic,
    /// Invalidation storms to inject; the workload lasts until they are
    /// over, however few `events` it asks for.
    pub storms: Option<StormSchedule>,
    /// Write changes in transactions (Debezium JSON formats with their
    /// metadata, Maxwell in its rows' `xid`, `xoffset` and `commit`), with
    /// these faults.
    pub transactions: Option<TxFaults>,
}

/// An outage: the service that invalidates one table sends nothing for a
/// while, so every change of the table in that time misses all its
/// invalidations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub table: u32,
    /// Event time of its start, after the workload's start.
    pub after_ms: i64,
    pub span_ms: i64,
    /// Normal traffic after it, before the workload ends.
    pub recovery_ms: i64,
}

impl Outage {
    /// `vigil gen --outage`: table 1's service stops for two minutes after
    /// one minute of traffic; three minutes of traffic follow.
    pub const STANDARD: Outage = Outage {
        table: 1,
        after_ms: 60_000,
        span_ms: 120_000,
        recovery_ms: 180_000,
    };

    /// Whether a change of `table` at `t` (after `start_ms`) is in it.
    fn covers(&self, table: u32, t: Millis, start_ms: Millis) -> bool {
        let from = start_ms + self.after_ms;
        table == self.table && (from..from + self.span_ms).contains(&t)
    }

    fn end_ms(&self, start_ms: Millis) -> Millis {
        start_ms + self.after_ms + self.span_ms + self.recovery_ms
    }
}

/// A generated record, in the order it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRecord {
    pub stream: Stream,
    pub topic: Arc<str>,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Kafka timestamp: the record's event time.
    pub ts_ms: Millis,
}

impl GenRecord {
    /// The record as a Kafka source hands it to ingest.
    pub fn raw_input(&self) -> RawInput<'_> {
        RawInput {
            stream: self.stream,
            key: self.key.as_deref(),
            value: self.value.as_deref().map(Payload::Bytes),
            timestamp_ms: Some(self.ts_ms),
        }
    }
}

/// A violation the engine must report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Expected {
    pub kind: &'static str,
    pub key: Option<String>,
    pub table: String,
    pub pk: String,
    /// `None` for the transaction-level kinds.
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<i64>,
}

impl Expected {
    /// The line of `expected.ndjson` (pk as a JSON object).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("expected violations serialize");
        v["pk"] = serde_json::from_str(&self.pk).unwrap_or(Value::Null);
        v
    }
}

/// Counts of what was generated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenStats {
    pub cdc_records: u64,
    pub cache_records: u64,
    pub episodes: u64,
    pub injected: BTreeMap<&'static str, u64>,
    pub redeliveries: u64,
    pub first_event_ms: Option<Millis>,
    pub last_event_ms: Option<Millis>,
    /// The record rate after spacing episodes of an entity at least
    /// [`SPACING_MS`] apart (lower than asked when there are few keys).
    pub effective_rate: f64,
    /// Cache records of injected storms (counted in `cache_records` too).
    pub storm_records: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Missing,
    Late,
    StaleFill,
    FillAfterDelete,
    Regression,
    Gap,
    Conflict,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Missing => "missing_invalidation",
            Fault::Late => "late_invalidation",
            Fault::StaleFill => "stale_fill",
            Fault::FillAfterDelete => "fill_after_delete",
            Fault::Regression => "version_regression",
            Fault::Gap => "version_gap",
            Fault::Conflict => "conflicting_version",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Entity {
    exists: bool,
    version: u64,
}

struct Pending {
    emit: Millis,
    seq: u64,
    record: GenRecord,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.emit, self.seq) == (o.emit, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.emit, self.seq).cmp(&(o.emit, o.seq))
    }
}

/// Generates the workload record by record, in write order, with memory
/// bounded by the records of the episodes in flight.
pub struct Generator {
    spec: Spec,
    rng: Rng,
    entities: Vec<Entity>,
    /// Microseconds between episode starts at the average rate.
    interval_us: u64,
    /// Start of the next episode, in microseconds after `spec.start_ms`.
    next_start_us: u64,
    episode: u64,
    snapshots_left: u64,
    /// Records created so far (written or waiting in `heap`).
    created: u64,
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    position: u64,
    tx: u64,
    expected: Vec<Expected>,
    stats: GenStats,
    /// The CDC format of each table: table `t` is written in
    /// `formats[t % formats.len()]`.
    formats: Vec<CdcFormat>,
    cdc_topics: Vec<Arc<str>>,
    /// The schemas of each table written in a schema registry's wire
    /// format.
    registered: Vec<Option<RegisteredTable>>,
    cache_topic: Arc<str>,
    storms: Vec<Injection>,
    /// The transaction being written of each [`TxForm`] (with
    /// `spec.transactions`): a workload of Debezium and Maxwell tables
    /// writes each connector's transactions apart.
    open_tx: [Option<OpenTx>; 2],
    outage: Option<Outage>,
}

/// Microseconds between episode starts for `wanted_us`, so that the
/// busiest moment of the traffic still spaces an entity's episodes apart.
fn episode_interval_us(spec: &Spec, wanted_us: u64) -> u64 {
    let keys = spec.keys.max(1);
    let min_us = (SPACING_MS as f64 * 1000.0 * spec.traffic.peak() / keys as f64).ceil() as u64;
    wanted_us.max(min_us).max(1)
}

/// The table a prefix storm hits: the first with two keys.
const STORM_TABLE: u32 = 1;

impl Generator {
    /// A workload whose tables are all written in `spec.format`.
    pub fn new(spec: Spec) -> Self {
        let format = spec.format;
        Generator::with_formats(spec, &[format])
    }

    /// A workload whose table `t` is written in `formats[t % formats.len()]`
    /// (`spec.format` is not used): several connectors' formats in one CDC
    /// stream, each table in one of them. Empty `formats` means
    /// `spec.format`.
    pub fn with_formats(spec: Spec, formats: &[CdcFormat]) -> Self {
        let formats = if formats.is_empty() {
            vec![spec.format]
        } else {
            formats.to_vec()
        };
        let format_of = |t: u32| formats[t as usize % formats.len()];
        let wanted_us = (1e6 * RECORDS_PER_EPISODE / spec.rate.max(1) as f64) as u64;
        let interval_us = episode_interval_us(&spec, wanted_us);
        let keys = spec.keys.max(1);
        let snapshots = if formats.iter().any(|f| f.has_snapshots()) {
            (keys / 2).min(spec.events / 10)
        } else {
            0
        };
        let cdc_topics: Vec<Arc<str>> = (0..spec.tables.max(1))
            .map(|t| match format_of(t) {
                CdcFormat::Maxwell => Arc::from("maxwell"),
                CdcFormat::Canal => Arc::from("canal"),
                _ => Arc::from(format!("gen.public.t{t}")),
            })
            .collect();
        // Ids 1, 2 for table 0's value and key, 3, 4 for table 1's...
        let registered = (0..spec.tables.max(1))
            .map(|t| {
                let topic = &cdc_topics[t as usize];
                match format_of(t) {
                    CdcFormat::DebeziumAvro => Some(RegisteredTable::Avro(Box::new(
                        AvroTable::new(topic, t, 2 * t + 1),
                    ))),
                    CdcFormat::DebeziumProtobuf => Some(RegisteredTable::Protobuf(Box::new(
                        ProtoTable::new(topic, t, 2 * t + 1),
                    ))),
                    _ => None,
                }
            })
            .collect();
        let stats = GenStats {
            effective_rate: RECORDS_PER_EPISODE * 1e6 / interval_us as f64,
            ..GenStats::default()
        };
        let storms = match &spec.storms {
            Some(schedule) => {
                let table = STORM_TABLE.min(spec.tables.max(1) - 1);
                let base = base_rates(spec.tables, interval_us, table);
                Injection::plan(schedule, spec.start_ms, base, spec.tables, table)
            }
            None => Vec::new(),
        };
        Generator {
            rng: Rng::new(spec.seed),
            entities: vec![Entity::default(); keys as usize],
            interval_us,
            next_start_us: 0,
            episode: 0,
            snapshots_left: snapshots,
            created: 0,
            heap: BinaryHeap::new(),
            seq: 0,
            position: 1_000,
            tx: 500,
            expected: Vec::new(),
            stats,
            formats,
            cdc_topics,
            registered,
            cache_topic: Arc::from("cache-events"),
            storms,
            open_tx: [None, None],
            outage: None,
            spec,
        }
    }

    /// The same workload spread over `span_ms` of event time instead of
    /// written at `spec.rate`: its records come at `events / span` a
    /// second, fewer than one a second if need be (still spacing an
    /// entity's episodes [`SPACING_MS`] apart). With more `keys` than
    /// episodes (about `events / 2.6`) every episode is of a new entity:
    /// ever-new keys, as a week of traffic brings.
    pub fn with_span(mut self, span_ms: i64) -> Self {
        // Snapshot reads all come before the first episode.
        let episodic = self.spec.events.saturating_sub(self.snapshots_left).max(1);
        let wanted_us =
            (span_ms.max(1) as f64 * 1000.0 * RECORDS_PER_EPISODE / episodic as f64) as u64;
        self.interval_us = episode_interval_us(&self.spec, wanted_us);
        self.stats.effective_rate = RECORDS_PER_EPISODE * 1e6 / self.interval_us as f64;
        self
    }

    /// The same workload with an outage of one table's invalidations; it
    /// lasts until the outage and the traffic after it are over, however
    /// few `events` it asks for.
    pub fn with_outage(mut self, outage: Outage) -> Result<Self, String> {
        if outage.table >= self.spec.tables.max(1) {
            return Err(format!(
                "the outage stops table {}'s invalidations: it needs at least {} tables (--tables {})",
                outage.table,
                outage.table + 1,
                self.spec.tables
            ));
        }
        self.outage = Some(outage);
        Ok(self)
    }

    /// The CDC format of table `t`.
    fn format_of(&self, table: u32) -> CdcFormat {
        self.formats[table as usize % self.formats.len()]
    }

    /// The normal invalidation traffic that storms are sized against, and
    /// whether it is enough for them to cross their thresholds without
    /// crossing others.
    pub fn check_storms(&self) -> Result<(), String> {
        if self.spec.storms.is_none() {
            return Ok(());
        }
        if self.spec.tables < 3 {
            return Err(format!(
                "--storms needs at least 3 tables (--tables {}) so that one prefix can storm while \
                 the global rate does not",
                self.spec.tables
            ));
        }
        let base = base_rates(self.spec.tables, self.interval_us, STORM_TABLE);
        if base.global < storms::MIN_BASE_RATE {
            return Err(format!(
                "--storms needs at least {} invalidations/s of normal traffic to size its storms \
                 against; this workload has {:.0}/s: raise --rate (and --keys, which spaces an \
                 entity's changes {SPACING_MS} ms apart)",
                storms::MIN_BASE_RATE,
                base.global
            ));
        }
        Ok(())
    }

    /// The schemas of the tables written in a schema registry's wire
    /// format (Avro, Protobuf), to register with the registry before the
    /// records are read.
    pub fn registered_schemas(&self) -> Vec<&GenSchema> {
        self.registered
            .iter()
            .flatten()
            .flat_map(RegisteredTable::schemas)
            .collect()
    }

    /// Frames the records of `subject` with `id` from now on (the id a
    /// schema registry gave it); false when no table has that subject.
    pub fn set_schema_id(&mut self, subject: &str, id: u32) -> bool {
        self.registered
            .iter_mut()
            .flatten()
            .any(|t| t.set_id(subject, id))
    }

    /// The storms a correct engine reports for this workload.
    pub fn expected_storms(&self) -> Vec<ExpectedStorm> {
        self.storms.iter().map(|s| s.expected.clone()).collect()
    }

    /// The configuration that maps the generated tables (checking the
    /// transactions when they are generated).
    pub fn config_toml(&self) -> String {
        self.config_toml_checking(self.spec.transactions.is_some())
    }

    /// The configuration that maps the generated tables, with
    /// `detect.transactions` as `transactions` says (the transaction
    /// topics are read either way: without the checks their records are
    /// counted and skipped).
    pub fn config_toml_checking(&self, transactions: bool) -> String {
        let format = match self.formats.as_slice() {
            [one] => format!("format {one:?}"),
            many => format!("formats {many:?}, one per table"),
        };
        let mut out = format!(
            "# Generated by `vigil gen` (seed {seed}, {format}).\n\
             [detect]\n\
             deadline = \"{DEADLINE_MS}ms\"\n\
             skew = \"{SKEW_MS}ms\"\n\
             allowed_lateness = \"{LATENESS_MS}ms\"\n\
             late_window = \"{LATE_WINDOW_MS}ms\"\n",
            seed = self.spec.seed,
        );
        if transactions {
            out.push_str(&format!(
                "transactions = true\ntransaction_timeout = \"{TX_TIMEOUT_MS}ms\"\n"
            ));
        }
        out.push_str("\n[inputs]\nunmapped_tables = \"dlq\"\n");
        let quoted = |topics: Vec<String>| -> String {
            let list: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
            format!("[{}]", list.join(", "))
        };
        let (transactions, topics): (Vec<String>, Vec<String>) =
            self.topics().into_iter().partition(|t| t == TX_TOPIC);
        let (cdc, cache): (Vec<String>, Vec<String>) = topics
            .into_iter()
            .partition(|t| self.stream_of_topic(t) == Some(Stream::Cdc));
        out.push_str(&format!(
            "cdc_topics = {}\ncache_topics = {}\n",
            quoted(cdc),
            quoted(cache)
        ));
        if !transactions.is_empty() {
            out.push_str(&format!("transaction_topics = {}\n", quoted(transactions)));
        }
        for t in 0..self.spec.tables.max(1) {
            let keys: Vec<String> = key_templates(t)
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect();
            let format = self.format_of(t);
            out.push_str(&format!(
                "\n[[tables]]\ntable = \"{}\"\npk = [\"id\"]\nkeys = [{}]\nversion = \"column:version\"\ncontiguous = true\n",
                format.table_name(t),
                keys.join(", ")
            ));
            if format == CdcFormat::DebeziumFlat {
                out.push_str("format = \"flattened\"\n");
            }
        }
        out
    }

    /// The violations a correct engine reports for what was generated so far
    /// (complete once the generator is exhausted), sorted.
    pub fn expected(&self) -> Vec<Expected> {
        let mut e = self.expected.clone();
        e.sort();
        e
    }

    pub fn stats(&self) -> &GenStats {
        &self.stats
    }

    /// Every topic the workload writes to.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.cdc_topics.iter().map(|t| t.to_string()).collect();
        topics.dedup();
        if self.formats.iter().any(|f| f.is_debezium()) {
            topics.push(HEARTBEAT_TOPIC.into());
        }
        if self.writes_tx_topic() {
            topics.push(TX_TOPIC.into());
        }
        topics.push(self.cache_topic.to_string());
        topics
    }

    /// Whether the workload writes BEGIN and END records: transactions of
    /// a Debezium table (Maxwell's are in its rows).
    fn writes_tx_topic(&self) -> bool {
        self.spec.transactions.is_some()
            && self
                .formats
                .iter()
                .any(|f| f.tx_form() == Some(TxForm::Debezium))
    }

    /// Which stream a topic of [`Generator::topics`] carries.
    pub fn stream_of_topic(&self, topic: &str) -> Option<Stream> {
        if topic == self.cache_topic.as_ref() {
            Some(Stream::Cache)
        } else if topic == HEARTBEAT_TOPIC
            || (topic == TX_TOPIC && self.writes_tx_topic())
            || self.cdc_topics.iter().any(|t| t.as_ref() == topic)
        {
            Some(Stream::Cdc)
        } else {
            None
        }
    }

    /// The partition of an entity's records in every topic: a hash of its
    /// id, so that each table spreads over all partitions.
    fn partition_of(&self, id: u64) -> i32 {
        (xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes()) % self.spec.partitions.max(1) as u64) as i32
    }

    fn done(&self) -> bool {
        let storms_over = self
            .spec
            .storms
            .as_ref()
            .is_none_or(|s| self.next_start_ms() >= self.spec.start_ms + s.span_ms());
        let outage_over = self
            .outage
            .is_none_or(|o| self.next_start_ms() >= o.end_ms(self.spec.start_ms));
        self.created >= self.spec.events && storms_over && outage_over
    }

    /// Records written before the next episode's start minus the skew are
    /// final: no later episode can write anything earlier. A held Maxwell
    /// row is written later at its own time: nothing after it is final.
    fn frontier(&self) -> Millis {
        let held = self
            .open_tx
            .iter()
            .flatten()
            .filter_map(|open| open.maxwell.as_ref()?.held.as_ref())
            .map(|(c, _)| c.commit_ts_ms)
            .min();
        let next = self.next_start_ms() - SKEW_MS;
        held.map_or(next, |held| held.min(next))
    }

    fn next_start_ms(&self) -> Millis {
        self.spec.start_ms + (self.next_start_us / 1000) as Millis
    }

    /// Queues the storm invalidations stamped before the frontier.
    fn inject_storms(&mut self) {
        let until = if self.done() {
            Millis::MAX
        } else {
            self.frontier()
        };
        for i in 0..self.storms.len() {
            while let Some(inv) = self.storms[i].next_before(until) {
                let (key, value) = encode_cache(&GenCacheEvent {
                    operation: "invalidate",
                    keys: inv.keys,
                    service: inv.service,
                    version: None,
                    entity: None,
                    ts_ms: inv.ts_ms,
                    ts_form: TsForm::Millis,
                });
                let partition = key.as_deref().map_or(0, |k| {
                    (xxhash_rust::xxh3::xxh3_64(k.as_bytes()) % self.spec.partitions.max(1) as u64)
                        as i32
                });
                self.stats.storm_records += 1;
                self.stats.cache_records += 1;
                self.seq += 1;
                self.heap.push(Reverse(Pending {
                    emit: inv.ts_ms,
                    seq: self.seq,
                    record: GenRecord {
                        stream: Stream::Cache,
                        topic: Arc::clone(&self.cache_topic),
                        partition,
                        key: key.map(String::into_bytes),
                        value: Some(value.into_bytes()),
                        ts_ms: inv.ts_ms,
                    },
                }));
            }
        }
    }

    fn push(&mut self, emit: Millis, record: GenRecord, may_repeat: bool) {
        if may_repeat && self.rng.chance(self.spec.faults.duplicate) {
            let later = emit + self.rng.range(100, 1_500);
            self.stats.redeliveries += 1;
            self.enqueue(later, record.clone());
        }
        self.enqueue(emit, record);
    }

    fn enqueue(&mut self, emit: Millis, record: GenRecord) {
        self.created += 1;
        match record.stream {
            Stream::Cdc => self.stats.cdc_records += 1,
            Stream::Cache => self.stats.cache_records += 1,
        }
        self.seq += 1;
        self.heap.push(Reverse(Pending {
            emit,
            seq: self.seq,
            record,
        }));
    }

    fn expect(
        &mut self,
        kind: ViolationKind,
        key: Option<&str>,
        table: u32,
        id: u64,
        version: u64,
        lag_ms: Option<i64>,
    ) {
        if kind == ViolationKind::MissingInvalidation
            && let Some(form) = self.format_of(table).tx_form()
            && let Some(open) = &mut self.open_tx[form as usize]
        {
            open.missed = true;
        }
        let format = self.format_of(table);
        let pk = if format.stringly() {
            json!({ "id": id.to_string() })
        } else {
            json!({ "id": id })
        };
        self.expected.push(Expected {
            kind: kind.as_str(),
            key: key.map(str::to_string),
            table: format.table_name(table),
            pk: pk.to_string(),
            version: Some(version),
            lag_ms,
        });
    }

    /// Whether the generator can write transactions: every table in a
    /// Debezium JSON format or Maxwell.
    pub fn check_transactions(&self) -> Result<(), String> {
        if self.spec.transactions.is_none() {
            return Ok(());
        }
        let Some(format) = self.formats.iter().find(|f| f.tx_form().is_none()) else {
            return Ok(());
        };
        let why = match format {
            CdcFormat::Canal => {
                "Canal's flat messages name no transaction (their id numbers Canal's batch)"
            }
            CdcFormat::DebeziumFlat => "ExtractNewRecordState drops the transaction block",
            _ => "the generator writes no transaction block in binary records",
        };
        Err(format!(
            "--transactions needs --format debezium, debezium-schema or maxwell: {why}"
        ))
    }

    /// The place in its transaction of the next change of `table`, opening
    /// a transaction (and writing its BEGIN, for Debezium) at `ts` if none
    /// of the table's form is open. A Maxwell row's `xoffset` is given when
    /// it is written (see [`Generator::change`]).
    fn tx_block(&mut self, table: u32, ts: Millis) -> Option<GenTx> {
        let faults = self.spec.transactions?;
        let form = self.format_of(table).tx_form()?;
        if self.open_tx[form as usize].is_none() {
            let episodes_left = self.rng.range(1, 3) as u64;
            let (id, maxwell) = match form {
                TxForm::Debezium => {
                    let id = format!("{}:{}", self.tx + 1, self.position);
                    self.tx_record(
                        json!({
                            "status": "BEGIN", "id": id, "ts_ms": ts,
                            "event_count": null, "data_collections": null
                        }),
                        ts,
                        &id,
                    );
                    (id, None)
                }
                TxForm::Maxwell => {
                    // The xid of the change it opens with.
                    let xid = self.tx;
                    let u = self.rng.unit();
                    let lose = (u < faults.lost_event).then(|| self.rng.range(0, 1) as u64);
                    let unterminated =
                        (0.0..faults.unterminated).contains(&(u - faults.lost_event));
                    let maxwell = MaxwellTx {
                        xid,
                        held: None,
                        next_xoffset: 0,
                        lose,
                        lost: false,
                        unterminated,
                    };
                    (xid.to_string(), Some(maxwell))
                }
            };
            self.open_tx[form as usize] = Some(OpenTx {
                id,
                episodes_left,
                counts: BTreeMap::new(),
                last_ts: ts,
                missed: false,
                maxwell,
            });
        }
        let open = self.open_tx[form as usize].as_mut()?;
        let total_order = open.counts.values().sum::<u64>() + 1;
        let in_table = open.counts.entry(table).or_default();
        *in_table += 1;
        open.last_ts = open.last_ts.max(ts);
        Some(match &open.maxwell {
            Some(m) => GenTx::Maxwell {
                xid: m.xid,
                xoffset: None,
            },
            None => GenTx::Debezium {
                id: open.id.clone(),
                total_order,
                data_collection_order: *in_table,
            },
        })
    }

    /// Ends an episode in the open transaction of `form`; its last closes
    /// it: a Debezium END is written, or announces an event too many, or is
    /// never written; a Maxwell transaction's held row is written as its
    /// commit row, or numbered as if more were to come.
    fn end_tx_episode(&mut self, form: TxForm) {
        let Some(faults) = self.spec.transactions else {
            return;
        };
        let Some(open) = self.open_tx[form as usize].as_mut() else {
            return;
        };
        open.episodes_left -= 1;
        if open.episodes_left > 0 {
            return;
        }
        let Some(open) = self.open_tx[form as usize].take() else {
            return;
        };
        let table_name = |g: &Self, t: u32| g.format_of(t).table_name(t);
        let first = open.counts.keys().map(|&t| table_name(self, t)).min();
        if let Some(maxwell) = open.maxwell {
            if open.missed {
                self.expect_tx(
                    ViolationKind::TransactionNotInvalidated,
                    first.clone().unwrap_or_default(),
                );
            }
            self.commit_maxwell(maxwell, first.unwrap_or_default());
            return;
        }
        let u = self.rng.unit();
        let (lost, unterminated) = (u < faults.lost_event, {
            let v = u - faults.lost_event;
            (0.0..faults.unterminated).contains(&v)
        });
        if open.missed {
            self.expect_tx(
                ViolationKind::TransactionNotInvalidated,
                first.clone().unwrap_or_default(),
            );
        }
        if unterminated {
            self.expect_tx(
                ViolationKind::UnterminatedTransaction,
                first.unwrap_or_default(),
            );
            return;
        }
        let mut collections: Vec<(String, u64)> = open
            .counts
            .iter()
            .map(|(&t, &n)| (table_name(self, t), n))
            .collect();
        if lost {
            let at = self.rng.range(0, collections.len() as i64 - 1) as usize;
            collections[at].1 += 1;
            let table = collections[at].0.clone();
            self.expect_tx(ViolationKind::IncompleteTransaction, table);
        }
        if self.rng.chance(P_UNMAPPED_IN_TX) {
            collections.push((UNMAPPED_TABLE.into(), 1));
        }
        let total: u64 = collections.iter().map(|(_, n)| n).sum();
        let listed: Vec<Value> = collections
            .iter()
            .map(|(t, n)| json!({ "data_collection": t, "event_count": n }))
            .collect();
        self.tx_record(
            json!({
                "status": "END", "id": open.id, "ts_ms": open.last_ts,
                "event_count": total, "data_collections": listed
            }),
            open.last_ts,
            &open.id,
        );
    }

    /// Ends a Maxwell transaction (its first table by name `first`): its
    /// held row is the commit row, or is numbered and no commit row comes.
    /// A skipped `xoffset` is a lost row (of no known table).
    fn commit_maxwell(&mut self, mut maxwell: MaxwellTx, first: String) {
        if let Some((mut row, may_repeat)) = maxwell.held.take() {
            row.tx = Some(maxwell.place(!maxwell.unterminated));
            self.write_change(row, may_repeat);
        }
        if maxwell.unterminated {
            self.expect_tx(ViolationKind::UnterminatedTransaction, first);
        } else if maxwell.lost {
            self.expect_tx(
                ViolationKind::IncompleteTransaction,
                crate::detect::transaction::UNKNOWN_TABLE.into(),
            );
        }
    }

    /// Closes every open transaction: the workload ends.
    fn end_transactions(&mut self) {
        for form in [TxForm::Debezium, TxForm::Maxwell] {
            if let Some(open) = self.open_tx[form as usize].as_mut() {
                open.episodes_left = 1;
                self.end_tx_episode(form);
            }
        }
    }

    /// Expects a violation of a whole transaction, of `table`.
    fn expect_tx(&mut self, kind: ViolationKind, table: String) {
        *self.stats.injected.entry(kind.as_str()).or_default() += 1;
        self.expected.push(Expected {
            kind: kind.as_str(),
            key: None,
            table,
            pk: "{}".into(),
            version: None,
            lag_ms: None,
        });
    }

    /// Writes a BEGIN or END record (delivered twice, sometimes).
    fn tx_record(&mut self, value: Value, ts: Millis, id: &str) {
        let record = GenRecord {
            stream: Stream::Cdc,
            topic: Arc::from(TX_TOPIC),
            partition: 0,
            key: Some(json!({ "id": id }).to_string().into_bytes()),
            value: Some(value.to_string().into_bytes()),
            ts_ms: ts,
        };
        self.push(ts, record, true);
    }

    /// Writes a change; a Maxwell row in a transaction is held until its
    /// place is known: the row before it is written then, numbered.
    fn change(&mut self, c: GenChange, may_repeat: bool) {
        if let Some(GenTx::Maxwell { .. }) = c.tx
            && let Some(maxwell) = self.open_tx[TxForm::Maxwell as usize]
                .as_mut()
                .and_then(|open| open.maxwell.as_mut())
        {
            if let Some((mut row, may_repeat)) = maxwell.held.replace((c, may_repeat)) {
                row.tx = Some(maxwell.place(false));
                self.write_change(row, may_repeat);
            }
            return;
        }
        self.write_change(c, may_repeat);
    }

    fn write_change(&mut self, c: GenChange, may_repeat: bool) {
        let format = self.format_of(c.table);
        let (key, value) = match &self.registered[c.table as usize] {
            Some(table) => {
                let (key, value) = table.encode(&c);
                (Some(key), value)
            }
            None => {
                let (key, value) = encode_change(format, &c);
                (key.map(String::into_bytes), value.into_bytes())
            }
        };
        let id = c.after.as_ref().or(c.before.as_ref()).map_or(0, |r| r.id);
        let record = GenRecord {
            stream: Stream::Cdc,
            topic: Arc::clone(&self.cdc_topics[c.table as usize]),
            partition: self.partition_of(id),
            key: key.clone(),
            value: Some(value),
            ts_ms: c.commit_ts_ms,
        };
        self.push(c.commit_ts_ms, record, may_repeat);
        if c.op == Op::Delete && format.is_debezium() {
            let tombstone = GenRecord {
                stream: Stream::Cdc,
                topic: Arc::clone(&self.cdc_topics[c.table as usize]),
                partition: self.partition_of(id),
                key,
                value: None,
                ts_ms: c.commit_ts_ms,
            };
            self.push(c.commit_ts_ms, tombstone, false);
        }
        if format.is_debezium() && self.stats.cdc_records.is_multiple_of(HEARTBEAT_EVERY) {
            let heartbeat = GenRecord {
                stream: Stream::Cdc,
                topic: Arc::from(HEARTBEAT_TOPIC),
                partition: 0,
                key: Some(br#"{"serverName":"gen"}"#.to_vec()),
                value: Some(json!({ "ts_ms": c.commit_ts_ms }).to_string().into_bytes()),
                ts_ms: c.commit_ts_ms,
            };
            self.push(c.commit_ts_ms, heartbeat, false);
        }
    }

    fn cache_event(&mut self, e: GenCacheEvent) {
        let (key, value) = encode_cache(&e);
        // Keyed by the entity, like its changes: the topics are
        // co-partitioned.
        let partition = e.entity.map_or(0, |(_, id)| self.partition_of(id));
        let record = GenRecord {
            stream: Stream::Cache,
            topic: Arc::clone(&self.cache_topic),
            partition,
            key: key.map(String::into_bytes),
            value: Some(value.into_bytes()),
            ts_ms: e.ts_ms,
        };
        let emit = e.ts_ms + self.rng.range(0, JITTER_MS);
        self.push(emit, record, true);
    }

    fn ts_form(&mut self) -> TsForm {
        *self
            .rng
            .pick(&[TsForm::Millis, TsForm::FractionalSeconds, TsForm::Rfc3339])
    }

    fn next_position(&mut self) -> (u64, u64) {
        self.position += 100;
        self.tx += 1;
        (self.position, self.tx)
    }

    fn snapshot(&mut self) {
        let e = self.snapshots_left * 2 - 2;
        self.snapshots_left -= 1;
        let table = (e % u64::from(self.spec.tables.max(1))) as u32;
        if !self.format_of(table).has_snapshots() {
            // The entity is created by its first episode instead.
            return;
        }
        let (position, tx_id) = self.next_position();
        self.entities[e as usize] = Entity {
            exists: true,
            version: 1,
        };
        let row = GenRow {
            id: e + 1,
            version: 1,
            note: "",
        };
        self.change(
            GenChange {
                table,
                op: Op::Read,
                before: None,
                after: Some(row),
                commit_ts_ms: self.spec.start_ms - 10 * SPACING_MS,
                position,
                tx_id,
                tx: None,
            },
            false,
        );
    }

    fn draw_fault(&mut self, op: Op) -> Option<Fault> {
        let f = self.spec.faults;
        let candidates: &[(Fault, f64)] = match op {
            Op::Update => &[
                (Fault::Missing, f.missing),
                (Fault::Late, f.late),
                (Fault::StaleFill, f.stale_fill),
                (Fault::Regression, f.regression),
                (Fault::Gap, f.gap),
                (Fault::Conflict, f.conflict),
            ],
            Op::Delete => &[
                (Fault::Missing, f.missing),
                (Fault::Late, f.late),
                (Fault::FillAfterDelete, f.fill_after_delete),
            ],
            _ => &[(Fault::Missing, f.missing), (Fault::Late, f.late)],
        };
        let mut u = self.rng.unit();
        for &(fault, rate) in candidates {
            if u < rate {
                return Some(fault);
            }
            u -= rate;
        }
        None
    }

    fn episode(&mut self) {
        let i = self.episode;
        self.episode += 1;
        self.stats.episodes += 1;
        let e = (i % self.entities.len() as u64) as usize;
        let mut t = self.next_start_ms();
        let factor = self.spec.traffic.factor(t - self.spec.start_ms);
        self.next_start_us += ((self.interval_us as f64 / factor) as u64).max(1);
        let table = (e as u64 % u64::from(self.spec.tables.max(1))) as u32;
        let whole_seconds = self.format_of(table).whole_seconds();
        if whole_seconds {
            t -= t.rem_euclid(1000);
        }
        let id = e as u64 + 1;
        let keys = keys_of(table, id);
        let entity = self.entities[e];
        let op = if !entity.exists {
            Op::Create
        } else if self.rng.chance(P_DELETE) {
            Op::Delete
        } else {
            Op::Update
        };
        let fault = self.draw_fault(op);
        if let Some(f) = fault {
            *self.stats.injected.entry(f.name()).or_default() += 1;
        }
        let row = |version: u64, note: &'static str| GenRow { id, version, note };
        let (before, after, version) = match op {
            Op::Create => (None, Some(row(1, "")), 1),
            Op::Delete => (Some(row(entity.version, "")), None, entity.version),
            _ => {
                let step = if fault == Some(Fault::Gap) { 2 } else { 1 };
                let v = entity.version + step;
                (Some(row(entity.version, "")), Some(row(v, "")), v)
            }
        };
        self.entities[e] = Entity {
            exists: op != Op::Delete,
            version,
        };
        let (position, tx_id) = self.next_position();
        let tx = self.tx_block(table, t);
        self.change(
            GenChange {
                table,
                op,
                before,
                after: after.clone(),
                commit_ts_ms: t,
                position,
                tx_id,
                tx,
            },
            true,
        );

        // Entity faults: a gap in the main change, or an extra update just
        // after it, of an older version (regression) or of the same version
        // with other data (conflict).
        let extra = match fault {
            Some(Fault::Gap) => {
                self.expect(ViolationKind::VersionGap, None, table, id, version, None);
                None
            }
            Some(Fault::Regression) => {
                Some((ViolationKind::VersionRegression, version - 1, "regressed"))
            }
            Some(Fault::Conflict) => Some((ViolationKind::ConflictingVersion, version, "conflict")),
            _ => None,
        };
        if let Some((kind, extra_version, note)) = extra {
            let (position, tx_id) = self.next_position();
            let commit_ts_ms = if whole_seconds { t } else { t + 5 };
            let tx = self.tx_block(table, commit_ts_ms);
            self.change(
                GenChange {
                    table,
                    op: Op::Update,
                    before: after.clone(),
                    after: Some(row(extra_version, note)),
                    commit_ts_ms,
                    position,
                    tx_id,
                    tx,
                },
                true,
            );
            self.expect(kind, None, table, id, extra_version, None);
        }

        self.invalidate(table, id, &keys, t, version, fault);
        if let Some(form) = self.format_of(table).tx_form() {
            self.end_tx_episode(form);
        }

        // Fills: normally of the current version; faults fill a stale
        // version, or a deleted row.
        let fill_ts = t + self.rng.range(2 * SKEW_MS, DEADLINE_MS);
        let fill = match fault {
            Some(Fault::StaleFill) => Some(version - 1),
            Some(Fault::FillAfterDelete) => Some(version),
            _ if op != Op::Delete && self.rng.chance(P_FILL) => Some(version),
            _ => None,
        };
        if let Some(fill_version) = fill {
            let key = self.rng.pick(&keys).clone();
            match fault {
                Some(Fault::StaleFill) => {
                    self.expect(
                        ViolationKind::StaleFill,
                        Some(&key),
                        table,
                        id,
                        fill_version,
                        None,
                    );
                }
                Some(Fault::FillAfterDelete) => {
                    self.expect(
                        ViolationKind::FillAfterDelete,
                        Some(&key),
                        table,
                        id,
                        fill_version,
                        None,
                    );
                }
                _ => {}
            }
            let operation = *self.rng.pick(&["set", "fill"]);
            let ts_form = self.ts_form();
            self.cache_event(GenCacheEvent {
                operation,
                keys: vec![key],
                service: format!("reader-{}", id % 4),
                version: Some(fill_version),
                entity: Some((table, id)),
                ts_ms: fill_ts,
                ts_form,
            });
        }
    }

    /// The invalidations of an episode's change: all keys in time, except
    /// the one a missing or late fault picks.
    fn invalidate(
        &mut self,
        table: u32,
        id: u64,
        keys: &[String],
        t: Millis,
        version: u64,
        fault: Option<Fault>,
    ) {
        if self
            .outage
            .is_some_and(|o| o.covers(table, t, self.spec.start_ms))
        {
            for key in keys {
                self.expect(
                    ViolationKind::MissingInvalidation,
                    Some(key),
                    table,
                    id,
                    version,
                    None,
                );
            }
            return;
        }
        let faulty = match fault {
            Some(Fault::Missing | Fault::Late) => Some(self.rng.pick(keys).clone()),
            _ => None,
        };
        let service = format!("svc-t{table}");
        let mut groups: Vec<(Vec<String>, Millis)> = Vec::new();
        let lag = self.rng.range(-(SKEW_MS * 8 / 10), DEADLINE_MS / 2);
        if faulty.is_none() && self.rng.chance(P_WILDCARD) {
            groups.push((vec![format!("t{table}:{id}:*")], t + lag));
        } else if faulty.is_none() && keys.len() > 1 && self.rng.chance(P_COMBINED) {
            groups.push((keys.to_vec(), t + lag));
        } else {
            for key in keys {
                let ts = if faulty.as_ref() == Some(key) {
                    // Missing in time either way; a late fault comes later.
                    self.expect(
                        ViolationKind::MissingInvalidation,
                        Some(key),
                        table,
                        id,
                        version,
                        None,
                    );
                    if fault != Some(Fault::Late) {
                        continue;
                    }
                    let late = t + DEADLINE_MS + self.rng.range(1, LATE_WINDOW_MS / 2);
                    self.expect(
                        ViolationKind::LateInvalidation,
                        Some(key),
                        table,
                        id,
                        version,
                        Some(late - t),
                    );
                    late
                } else {
                    t + self.rng.range(-(SKEW_MS * 8 / 10), DEADLINE_MS / 2)
                };
                groups.push((vec![key.clone()], ts));
            }
        }
        for (keys, ts) in groups {
            let operation = *self.rng.pick(&["invalidate", "delete", "update"]);
            let versioned = !self.rng.chance(P_UNVERSIONED_INVALIDATION);
            let ts_form = self.ts_form();
            self.cache_event(GenCacheEvent {
                operation,
                keys,
                service: service.clone(),
                version: versioned.then_some(version),
                entity: Some((table, id)),
                ts_ms: ts,
                ts_form,
            });
        }
    }
}

impl Iterator for Generator {
    type Item = GenRecord;

    fn next(&mut self) -> Option<GenRecord> {
        loop {
            self.inject_storms();
            if self.done() {
                // The last transactions end with the workload, before
                // what is left is written.
                self.end_transactions();
            }
            let ready = match self.heap.peek() {
                Some(Reverse(p)) => self.done() || p.emit < self.frontier(),
                None => false,
            };
            if ready {
                let Reverse(p) = self.heap.pop()?;
                self.stats.first_event_ms = Some(
                    self.stats
                        .first_event_ms
                        .map_or(p.record.ts_ms, |f| f.min(p.record.ts_ms)),
                );
                self.stats.last_event_ms = Some(
                    self.stats
                        .last_event_ms
                        .map_or(p.record.ts_ms, |l| l.max(p.record.ts_ms)),
                );
                return Some(p.record);
            }
            if self.done() {
                return None;
            }
            if self.snapshots_left > 0 {
                self.snapshot();
            } else {
                self.episode();
            }
        }
    }
}

/// Key templates of generated table `t`: odd tables are cached under two keys.
pub fn key_templates(t: u32) -> Vec<String> {
    let mut keys = vec![format!("t{t}:{{id}}:row")];
    if t % 2 == 1 {
        keys.push(format!("t{t}:{{id}}:page"));
    }
    keys
}

/// The normal invalidation traffic of a workload with an episode every
/// `interval_us`: globally, of `table`'s prefix, and of wildcards.
fn base_rates(tables: u32, interval_us: u64, table: u32) -> BaseRates {
    let episodes = 1e6 / interval_us.max(1) as f64;
    let tables = tables.max(1);
    let keys_of_table = |t: u32| key_templates(t).len() as f64;
    let keys_per_episode = (0..tables).map(keys_of_table).sum::<f64>() / f64::from(tables);
    BaseRates {
        global: episodes * keys_per_episode,
        prefix: episodes / f64::from(tables) * keys_of_table(table),
        wildcard: episodes * P_WILDCARD,
    }
}

fn keys_of(table: u32, id: u64) -> Vec<String> {
    key_templates(table)
        .iter()
        .map(|k| k.replace("{id}", &id.to_string()))
        .collect()
}

#[cfg(test)]
mod tests;
