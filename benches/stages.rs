//! Criterion benchmarks of vigil's hot stages, each on realistic input:
//! `cargo bench --bench stages` runs them all, `cargo bench --bench stages
//! -- GROUP` one group (`decode`, `map`, `ingest`, `state`, `entity`,
//! `key`, `storms`, `output`).
//!
//! Inputs come from the workload generator of `vigil gen`
//! ([`vigil::workload`]) with its default fault rates: 50,000 records of
//! 5,000 rows in three tables (snapshot reads, then creates, updates and
//! deletes, with redeliveries and heartbeats) and the invalidations (some
//! multi-key, some wildcards) and fills of their cache keys. [`widen`] gives
//! its rows ten columns: a schemaless Debezium update with both images is
//! about 780 bytes (PostgreSQL source block), 2.9 KB with the schema
//! wrapper. Groups that take "the last N records" take them from the end of
//! the workload, past its snapshot.
//!
//! - `decode`: one message value to its format-neutral changes, per format
//!   (`debezium`: schemaless PostgreSQL envelopes; `debezium_schema`: inside
//!   the JSON converter's schema/payload wrapper; `maxwell`; `canal`), on the
//!   last 2,000 CDC records; `cache_invalidation` and `cache_fill` on the
//!   last 2,000 cache events of each action; `kcat_line`: a `kcat -J` line
//!   read up to its unescaped payload; `kcat_debezium`: a `kcat -J`
//!   line wrapping a Debezium record, parsed, then its value decoded;
//!   `debezium_avro` and `debezium_protobuf`: the last 2,000 Debezium
//!   values of the same workload written in Confluent's Avro and Protobuf
//!   framings (the generator's seven columns, not widened), each decoded
//!   with its schema at hand and viewed as the format-neutral change.
//!   Elements: messages.
//! - `map/debezium`: a decoded Debezium change and `[[tables]]` to a
//!   `Change` with its cache keys, version and ids. Elements: changes.
//! - `ingest/debezium_workload`: decode + map of CDC records and decode of
//!   cache events, as every source does, on the last 4,000 records of both
//!   streams. Elements: records.
//! - `state`: the RocksDB store, in a temporary directory, holding 300,000
//!   cache keys whose values are the key states of the workload encoded as
//!   a worker stores them, flushed to SST files before the first read:
//!   `get_existing` (1,000 keys spread over the key space),
//!   `get_absent` (1,000 keys never written: a key's first sighting),
//!   `write_batch` (1,000 key states in one batch, as a checkpoint writes
//!   them, overwriting keys spread over the key space). Elements: keys.
//! - `entity/check`: the entity checks on every change of the workload, in
//!   order, from empty state. Elements: changes.
//! - `key`: the key checks on every cache key of the workload, fed kind by
//!   kind: `on_change` (every key of every create, update and delete, from
//!   empty state, no glob retained), `on_invalidation` (every invalidated
//!   key, a glob's being every changed key it matches) and `on_fill` (every
//!   filled key), both on the state the changes left, and `advance` (every
//!   key, once all is applied, to the end of input as file mode ends: every
//!   change and fill decided). Elements: calls.
//! - `storms/observe_and_advance`: storm detection on a busy fleet's
//!   invalidations (see [`invalidations`]). Elements: invalidation events.
//! - `output/cloudevents`: every violation the entity and key checks find in
//!   the workload, to CloudEvents JSON. Elements: violations.

use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::ops::Bound;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};
use serde_json::{Value, json};
use tempfile::TempDir;

use vigil::config::{Config, StormsConfig};
use vigil::detect::entity::{self, EntityState, EntityVerdict};
use vigil::detect::key::{
    Decisions, Fill, Invalidation, KeyRules, KeyState, glob_matches, glob_prefix,
};
use vigil::detect::storm::StormDetector;
use vigil::events::Violation;
use vigil::formats::{
    DecodedCdc, Flattened, KcatBuffers, RawChange, Row, decode_avro_envelope, decode_cache,
    decode_cdc, decode_key, decode_protobuf_envelope, framed,
};
use vigil::hash;
use vigil::ingest::{Ingest, RawInput, Record, Stream};
use vigil::io::file::kcat_line;
use vigil::mapping::{Change, Mapper};
use vigil::model::{CacheAction, CacheKey, Millis, Name, Provenance, is_glob};
use vigil::pipeline::{EngineOptions, storm_rules};
use vigil::registry::{ProtoSchema, WriterSchema};
use vigil::state::{Cf, RocksStore, StateBatch, Store, codec};
use vigil::telemetry::Stats;
use vigil::workload::encode::CdcFormat;
use vigil::workload::storms::Traffic;
use vigil::workload::{FaultRates, GenRecord, Generator, PARTITIONS, START_MS, Spec};

/// Messages per iteration of the `decode` and `map` benchmarks.
const DECODED: usize = 2_000;
/// Records per iteration of the `ingest` benchmark.
const INGESTED: usize = 4_000;
/// Keys in the store of the `state` benchmarks.
const STORED_KEYS: usize = 300_000;
/// Keys read or written per iteration of the `state` benchmarks.
const STATE_BATCH: usize = 1_000;

/// Columns added to every generated row image, after the generator's seven:
/// a country code and two `timestamptz` columns as Debezium writes them
/// (`io.debezium.time.ZonedTimestamp`).
const EXTRA_COLUMNS: [(&str, &str); 3] = [
    ("country", "FR"),
    ("created_at", "2023-11-14T22:13:20.123456Z"),
    ("updated_at", "2023-11-14T22:14:02.654321Z"),
];

/// A generated workload and the configuration that maps its tables.
struct Workload {
    records: Vec<GenRecord>,
    config: Config,
}

/// The Debezium workload, shared by every group but `decode`'s other formats.
static DEBEZIUM: LazyLock<Workload> = LazyLock::new(|| generate(CdcFormat::Debezium));

/// The Debezium workload decoded and mapped, in order.
static RECORDS: LazyLock<Vec<Record>> = LazyLock::new(|| {
    let ingest = Ingest::new(&DEBEZIUM.config, Arc::new(Stats::default())).expect("ingest");
    ingest_all(&ingest, &raw_inputs(&DEBEZIUM.records))
});

/// What the router hands the key checks for [`RECORDS`].
static KEY_INPUTS: LazyLock<KeyInputs> = LazyLock::new(|| key_inputs(&RECORDS));

fn generate(format: CdcFormat) -> Workload {
    let mut generator = generator(format);
    let mut records: Vec<GenRecord> = generator.by_ref().collect();
    for record in records.iter_mut().filter(|r| r.stream == Stream::Cdc) {
        if let Some(value) = &mut record.value {
            let mut json: Value = serde_json::from_slice(value).expect("generated JSON");
            widen(&mut json);
            *value = json.to_string().into_bytes();
        }
    }
    let config = Config::parse_with_env("gen", &generator.config_toml(), std::iter::empty())
        .expect("the generator's configuration is valid");
    Workload { records, config }
}

/// The last [`DECODED`] Debezium values of the workload in a schema
/// registry's framing (`format` Avro or Protobuf), with the schemas of
/// their ids compiled by `compile`.
fn framed_values<S>(
    format: CdcFormat,
    compile: impl Fn(u32, &str) -> S,
) -> (Vec<Vec<u8>>, HashMap<u32, S>) {
    let mut generator = generator(format);
    let values = last_n(
        generator
            .by_ref()
            .filter(|r| r.stream == Stream::Cdc && r.topic.starts_with("gen."))
            .filter_map(|r| r.value)
            .collect(),
        DECODED,
    );
    let schemas = generator
        .registered_schemas()
        .into_iter()
        .map(|s| (s.id, compile(s.id, &s.text)))
        .collect();
    (values, schemas)
}

/// A record in Confluent's framing: its schema and the bytes after the id.
fn with_schema<'a, S>(schemas: &'a HashMap<u32, S>, value: &'a [u8]) -> (&'a S, &'a [u8]) {
    let framed = framed(value).expect("framed");
    (&schemas[&framed.schema_id], framed.datum)
}

fn generator(format: CdcFormat) -> Generator {
    Generator::new(Spec {
        events: 50_000,
        keys: 5_000,
        tables: 3,
        rate: 10_000,
        format,
        seed: 1,
        faults: FaultRates::GEN,
        start_ms: START_MS,
        partitions: PARTITIONS,
        traffic: Traffic::Steady,
        storms: None,
        transactions: None,
    })
}

/// Adds [`EXTRA_COLUMNS`] to every row image (an object whose `email` is an
/// address: Canal's `mysqlType` has an `email` too) and to every schema that
/// describes one.
fn widen(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            if fields
                .get("email")
                .and_then(Value::as_str)
                .is_some_and(|email| email.contains('@'))
            {
                for (name, column) in EXTRA_COLUMNS {
                    fields.insert(name.into(), json!(column));
                }
            }
            fields.values_mut().for_each(widen);
        }
        Value::Array(items) => {
            if items.iter().any(|item| item["field"] == "email") {
                for (name, _) in EXTRA_COLUMNS {
                    items.push(json!({ "type": "string", "optional": true, "field": name }));
                }
            }
            items.iter_mut().for_each(widen);
        }
        _ => {}
    }
}

/// The last `n` items.
fn last_n<T>(mut items: Vec<T>, n: usize) -> Vec<T> {
    items.split_off(items.len().saturating_sub(n))
}

/// The last `n` records of a stream.
fn last_of(records: &[GenRecord], stream: Stream, n: usize) -> Vec<&GenRecord> {
    last_n(records.iter().filter(|r| r.stream == stream).collect(), n)
}

/// Where a record sits, its offset being its index among those benchmarked.
fn provenance(record: &GenRecord, offset: usize) -> Provenance {
    Provenance {
        topic: Name::new(&record.topic),
        partition: record.partition,
        offset: offset as i64,
        from_file: false,
    }
}

/// Records as a Kafka source hands them to ingest.
fn raw_inputs(records: &[GenRecord]) -> Vec<(RawInput<'_>, Provenance)> {
    records
        .iter()
        .enumerate()
        .map(|(offset, r)| {
            let input = r.raw_input();
            (input, provenance(r, offset))
        })
        .collect()
}

fn ingest_all(ingest: &Ingest, inputs: &[(RawInput<'_>, Provenance)]) -> Vec<Record> {
    let mut out = Vec::new();
    for (input, provenance) in inputs {
        ingest
            .ingest(*input, provenance, &mut out)
            .expect("generated records decode and map");
    }
    out
}

/// Every change of [`RECORDS`].
fn changes() -> Vec<&'static Change> {
    RECORDS
        .iter()
        .filter_map(|r| match r {
            Record::Change(c) => Some(c),
            Record::Cache(..) | Record::Transaction(_) | Record::Tick(_) => None,
        })
        .collect()
}

/// A benchmark group sized so that the whole run takes a few minutes.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group
}

fn elements(n: usize) -> Throughput {
    Throughput::Elements(n as u64)
}

/// Benchmarks `f` on every item, one element each.
fn bench_each<T, O>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    items: &[T],
    mut f: impl FnMut(&T) -> O,
) {
    group.throughput(elements(items.len()));
    group.bench_function(name, |b| {
        b.iter(|| items.iter().map(&mut f).collect::<Vec<O>>())
    });
}

/// Decoding of CDC values per format, cache events and `kcat -J` lines.
fn decode(c: &mut Criterion) {
    let mut group = group(c, "decode");
    for (name, format) in [
        ("debezium", CdcFormat::Debezium),
        ("debezium_schema", CdcFormat::DebeziumSchema),
        ("maxwell", CdcFormat::Maxwell),
        ("canal", CdcFormat::Canal),
    ] {
        let generated;
        let workload = if format == CdcFormat::Debezium {
            &*DEBEZIUM
        } else {
            generated = generate(format);
            &generated
        };
        let values: Vec<Option<&str>> = last_of(&workload.records, Stream::Cdc, DECODED)
            .into_iter()
            .map(|r| text(&r.value))
            .collect();
        bench_each(&mut group, name, &values, |v| {
            decode_cdc(*v, Flattened::Everywhere)
        });
    }

    let (avro, schemas) = framed_values(CdcFormat::DebeziumAvro, |id, text| {
        WriterSchema::parse(id, text, &[]).expect("generated Avro schema")
    });
    bench_each(&mut group, "debezium_avro", &avro, |v| {
        let (schema, datum) = with_schema(&schemas, v);
        let envelope = decode_avro_envelope(schema, datum).expect("decodes");
        matches!(envelope.view(), Ok(DecodedCdc::Changes(_)))
    });
    let (protobuf, schemas) = framed_values(CdcFormat::DebeziumProtobuf, |id, text| {
        ProtoSchema::compile(id, text, &[]).expect("generated Protobuf schema")
    });
    bench_each(&mut group, "debezium_protobuf", &protobuf, |v| {
        let (schema, payload) = with_schema(&schemas, v);
        let envelope = decode_protobuf_envelope(schema, payload).expect("decodes");
        matches!(envelope.view(), Ok(DecodedCdc::Changes(_)))
    });

    let (invalidations, fills): (Vec<_>, Vec<_>) = DEBEZIUM
        .records
        .iter()
        .filter(|r| r.stream == Stream::Cache)
        .filter_map(|r| Some((text(&r.value)?, r.ts_ms)))
        .partition(|(value, ts)| {
            decode_cache(value, Some(*ts)).is_ok_and(|e| e.action() == CacheAction::Invalidate)
        });
    for (name, events) in [("cache_invalidation", invalidations), ("cache_fill", fills)] {
        bench_each(&mut group, name, &last_n(events, DECODED), |(value, ts)| {
            decode_cache(value, Some(*ts))
        });
    }

    let lines: Vec<String> = last_of(&DEBEZIUM.records, Stream::Cdc, DECODED)
        .into_iter()
        .enumerate()
        .map(|(offset, r)| {
            kcat_line(
                &r.topic,
                r.partition,
                offset as i64,
                Some(r.ts_ms),
                text(&r.key),
                text(&r.value),
            )
        })
        .collect();
    let mut buffers = KcatBuffers::default();
    bench_each(&mut group, "kcat_line", &lines, |l| {
        buffers.parse(l).map(|r| r.map(|r| r.payload.map(str::len)))
    });
    bench_each(&mut group, "kcat_debezium", &lines, |l| {
        decode_kcat(l, &mut buffers)
    });
    group.finish();
}

/// What the file source does with a `kcat -J` line before mapping, with the
/// buffers it keeps across lines: whether it decoded.
fn decode_kcat(line: &str, buffers: &mut KcatBuffers) -> bool {
    match buffers.parse(line) {
        Some(Ok(record)) => decode_cdc(record.payload, Flattened::Everywhere).is_ok(),
        _ => false,
    }
}

/// Key mapping of decoded Debezium changes.
fn mapping(c: &mut Criterion) {
    let mapper = Mapper::new(&DEBEZIUM.config);
    let mut decoded: Vec<(RawChange<'static>, Option<Row<'static>>, Provenance, Millis)> =
        Vec::new();
    for (offset, r) in last_of(&DEBEZIUM.records, Stream::Cdc, DECODED)
        .into_iter()
        .enumerate()
    {
        if let Ok(DecodedCdc::Changes(raws)) = decode_cdc(text(&r.value), Flattened::Everywhere) {
            let key = text(&r.key).and_then(decode_key);
            for raw in raws {
                decoded.push((raw, key.clone(), provenance(r, offset), r.ts_ms));
            }
        }
    }
    let mut group = group(c, "map");
    bench_each(
        &mut group,
        "debezium",
        &decoded,
        |(raw, key, provenance, ts)| mapper.map(raw, key.as_ref(), provenance, Some(*ts)),
    );
    group.finish();
}

/// Decode + map, as every source runs it.
fn ingest(c: &mut Criterion) {
    let ingest = Ingest::new(&DEBEZIUM.config, Arc::new(Stats::default())).expect("ingest");
    let records = &DEBEZIUM.records;
    let inputs = raw_inputs(&records[records.len() - INGESTED..]);
    let mut group = group(c, "ingest");
    group.throughput(elements(inputs.len()));
    group.bench_function("debezium_workload", |b| {
        b.iter(|| ingest_all(&ingest, &inputs))
    });
    group.finish();
}

/// The RocksDB store, filled, and the values it was filled with.
struct FilledStore {
    // Declared before the directory: closed before it is removed.
    store: RocksStore,
    values: Vec<Vec<u8>>,
    _dir: TempDir,
}

/// Storage key of the `i`th cache key of the `state` benchmarks.
fn storage_key(i: usize) -> Vec<u8> {
    codec::scoped(0, format!("t{}:{i}:row", i % 3).as_bytes())
}

/// The `i`th of a sequence that visits every stored key, scattered over the
/// key space.
fn scattered(i: usize) -> usize {
    i.wrapping_mul(7_919) % STORED_KEYS
}

/// Puts of the values, in turn, under the keys of `indices`.
fn key_batch(indices: impl Iterator<Item = usize>, values: &[Vec<u8>]) -> StateBatch {
    let mut batch = StateBatch::default();
    for i in indices {
        batch.put(
            Cf::Keys,
            0,
            storage_key(i),
            values[i % values.len()].clone(),
        );
    }
    batch
}

fn filled_store() -> FilledStore {
    let rules = key_rules();
    // Encoded as a worker stores a key: its state, then its timer's due
    // time (the fields of its private `StoredKey`, which bincode writes alike).
    let values: Vec<Vec<u8>> = states_after_all()
        .into_values()
        .map(|s| codec::encode(s.touched, &(&s, s.next_due(&rules))))
        .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = RocksStore::open(dir.path()).expect("a new store");
    for start in (0..STORED_KEYS).step_by(10_000) {
        store
            .write(key_batch(start..start + 10_000, &values))
            .expect("the store writes");
    }
    store.compact(Cf::Keys);
    FilledStore {
        store,
        values,
        _dir: dir,
    }
}

/// The storage keys of one iteration's reads, `offset` past the stored
/// indices for keys never written.
fn lookups(first: usize, offset: usize) -> Vec<Vec<u8>> {
    (first..first + STATE_BATCH)
        .map(|i| storage_key(offset + scattered(i)))
        .collect()
}

/// Point reads and batched writes of key states through the RocksDB store.
fn state(c: &mut Criterion) {
    // Filled on first use: filling takes seconds, and a filter may skip
    // every benchmark of the group.
    let filled = OnceCell::new();
    let mut group = group(c, "state");
    group.throughput(elements(STATE_BATCH));
    for (name, offset) in [("get_existing", 0), ("get_absent", STORED_KEYS)] {
        let mut next = 0;
        group.bench_function(name, |b| {
            let store = &filled.get_or_init(filled_store).store;
            b.iter_batched(
                || {
                    next += STATE_BATCH;
                    lookups(next, offset)
                },
                |keys| {
                    keys.iter()
                        .map(|k| store.get(Cf::Keys, k).expect("the store reads"))
                        .collect::<Vec<_>>()
                },
                BatchSize::LargeInput,
            )
        });
    }
    let mut next = 0;
    group.bench_function("write_batch", |b| {
        let FilledStore { store, values, .. } = filled.get_or_init(filled_store);
        b.iter_batched(
            || {
                next += STATE_BATCH;
                key_batch((next..next + STATE_BATCH).map(scattered), values)
            },
            |batch| store.write(batch).expect("the store writes"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Runs the entity checks on `changes` from empty state; returns the
/// violations found.
fn check_entities(changes: &[&Change]) -> Vec<Violation> {
    let mut states: HashMap<u64, EntityState> = HashMap::new();
    changes
        .iter()
        .filter_map(
            |c| match entity::check(states.entry(c.entity).or_default(), c) {
                EntityVerdict::Violation(v) => Some(*v),
                EntityVerdict::Duplicate | EntityVerdict::Accepted => None,
            },
        )
        .collect()
}

/// Entity checks (regressions, gaps, conflicts).
fn entity_checks(c: &mut Criterion) {
    let changes = changes();
    let mut group = group(c, "entity");
    group.throughput(elements(changes.len()));
    group.bench_function("check", |b| b.iter(|| check_entities(&changes)));
    group.finish();
}

/// The key checks' inputs, made from records as the router and the workers
/// make them: one item per cache key of a create, update or delete, per
/// invalidated key (a glob's for every key of a change that it matches, not
/// retained) and per filled key, in order.
struct KeyInputs {
    changes: Vec<(CacheKey, &'static Change)>,
    /// With whether the key retains the invalidation.
    invalidations: Vec<(CacheKey, Invalidation, bool)>,
    fills: Vec<(CacheKey, Fill)>,
}

fn key_inputs(records: &'static [Record]) -> KeyInputs {
    let changes: Vec<(CacheKey, &Change)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Change(c) if c.op.obliges_invalidation() => Some(c),
            _ => None,
        })
        .flat_map(|c| c.keys.iter().map(move |k| (k.clone(), c)))
        .collect();
    let changed: BTreeSet<CacheKey> = changes.iter().map(|(k, _)| k.clone()).collect();
    let (mut invalidations, mut fills) = (Vec::new(), Vec::new());
    for (event, evidence) in records.iter().filter_map(|r| match r {
        Record::Cache(e, evidence) => Some((e, evidence)),
        Record::Change(_) | Record::Transaction(_) | Record::Tick(_) => None,
    }) {
        let service = event.source_service.clone();
        match event.action() {
            CacheAction::Invalidate => {
                let inv = Invalidation {
                    ts: event.ts_ms,
                    version: event.version,
                    service,
                    evidence: evidence.clone(),
                };
                for key in &event.keys {
                    if is_glob(key) {
                        let prefix = glob_prefix(key);
                        invalidations.extend(
                            changed
                                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                                .take_while(|k| k.starts_with(prefix))
                                .filter(|k| glob_matches(key, k))
                                .map(|k| (k.clone(), inv.clone(), false)),
                        );
                    } else {
                        invalidations.push((key.clone(), inv.clone(), true));
                    }
                }
            }
            CacheAction::Fill => fills.extend(event.keys.iter().map(|key| {
                let fill = Fill {
                    id: hash::fill(key, event.ts_ms, event.version, service.as_deref()),
                    ts: event.ts_ms,
                    version: event.version,
                    service: service.clone(),
                    evidence: evidence.clone(),
                    reported: None,
                };
                (key.clone(), fill)
            })),
        }
    }
    KeyInputs {
        changes,
        invalidations,
        fills,
    }
}

type KeyStates = HashMap<CacheKey, KeyState>;

fn key_rules() -> KeyRules {
    EngineOptions::from_config(&DEBEZIUM.config, true).key_rules
}

/// The state of a key, created empty on first use.
fn key_state<'a>(states: &'a mut KeyStates, key: &CacheKey) -> &'a mut KeyState {
    states.entry(key.clone()).or_default()
}

fn apply_changes(states: &mut KeyStates, rules: &KeyRules) {
    for (key, change) in &KEY_INPUTS.changes {
        key_state(states, key).on_change(change, std::iter::empty(), rules);
    }
}

fn apply_invalidations(states: &mut KeyStates, rules: &KeyRules) {
    for (key, inv, retain) in &KEY_INPUTS.invalidations {
        key_state(states, key).on_invalidation(inv, *retain, rules);
    }
}

fn apply_fills(states: &mut KeyStates, fills: Vec<(CacheKey, Fill)>) {
    for (key, fill) in fills {
        key_state(states, &key).on_fill(fill);
    }
}

/// Advances every key to the end of input.
fn advance_all(states: &mut KeyStates, rules: &KeyRules) -> Decisions {
    let mut decisions = Decisions::default();
    for (key, state) in states.iter_mut() {
        state.advance(key, Millis::MAX, rules, &mut decisions);
    }
    decisions
}

fn states_after_changes() -> KeyStates {
    let mut states = KeyStates::new();
    apply_changes(&mut states, &key_rules());
    states
}

/// Key states once every record of the workload is applied, none decided.
fn states_after_all() -> KeyStates {
    let mut states = states_after_changes();
    apply_invalidations(&mut states, &key_rules());
    apply_fills(&mut states, KEY_INPUTS.fills.clone());
    states
}

/// Key checks (missing and late invalidations, stale fills, fills after
/// deletes), one benchmark per entry point.
fn key_checks(c: &mut Criterion) {
    let rules = key_rules();
    let after_changes = states_after_changes();
    let after_all = states_after_all();
    let mut group = group(c, "key");
    group.throughput(elements(KEY_INPUTS.changes.len()));
    group.bench_function("on_change", |b| {
        b.iter_with_large_drop(|| {
            let mut states = KeyStates::new();
            apply_changes(&mut states, &rules);
            states
        })
    });
    group.throughput(elements(KEY_INPUTS.invalidations.len()));
    group.bench_function("on_invalidation", |b| {
        b.iter_batched_ref(
            || after_changes.clone(),
            |states| apply_invalidations(states, &rules),
            BatchSize::LargeInput,
        )
    });
    group.throughput(elements(KEY_INPUTS.fills.len()));
    group.bench_function("on_fill", |b| {
        b.iter_batched(
            || (after_changes.clone(), KEY_INPUTS.fills.clone()),
            |(mut states, fills)| {
                apply_fills(&mut states, fills);
                states
            },
            BatchSize::LargeInput,
        )
    });
    group.throughput(elements(after_all.len()));
    group.bench_function("advance", |b| {
        b.iter_batched_ref(
            || after_all.clone(),
            |states| advance_all(states, &rules),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Invalidation events of a busy service fleet: one key each over a million
/// distinct keys, three prefixes, ten services, every tenth event a bulk of
/// 25 keys, 10,000 events a second of event time.
fn invalidations(n: usize) -> Vec<(Millis, Vec<CacheKey>, &'static str)> {
    const SERVICES: [&str; 10] = [
        "users-api",
        "orders-api",
        "search",
        "catalog",
        "cart",
        "payments",
        "auth",
        "reviews",
        "inventory",
        "pricing",
    ];
    const PREFIXES: [&str; 3] = ["user", "order", "product"];
    (0..n)
        .map(|i| {
            let width = if i % 10 == 0 { 25 } else { 1 };
            let keys = (0..width)
                .map(|j| {
                    let k = (i * 7_919 + j * 104_729) % 1_000_000;
                    CacheKey::from(format!("{}:{k}", PREFIXES[k % 3]))
                })
                .collect();
            (i as Millis / 10, keys, SERVICES[i % 10])
        })
        .collect()
}

/// Storm detection: counting every invalidation by scope, and judging each
/// second as the watermark passes it.
fn storms(c: &mut Criterion) {
    let rules = storm_rules(&StormsConfig::default());
    let events = invalidations(100_000);
    let mut group = group(c, "storms");
    group.throughput(elements(events.len()));
    group.bench_function("observe_and_advance", |b| {
        b.iter(|| {
            let mut detector = StormDetector::default();
            let mut out = Vec::new();
            for (ts, keys, service) in &events {
                detector.observe(*ts, keys, Some(service), &rules);
                if ts % 1_000 == 0 {
                    detector.advance(ts - 2_000, &rules, &mut out);
                }
            }
            detector.advance(Millis::MAX, &rules, &mut out);
            black_box(out)
        })
    });
    group.finish();
}

/// Violations to CloudEvents JSON.
fn output(c: &mut Criterion) {
    let mut violations = check_entities(&changes());
    violations.extend(advance_all(&mut states_after_all(), &key_rules()).violations);
    let source = &DEBEZIUM.config.outputs.source;
    let mut group = group(c, "output");
    bench_each(&mut group, "cloudevents", &violations, |v| {
        v.to_cloudevent(source)
    });
    group.finish();
}

criterion_group!(
    benches,
    decode,
    mapping,
    ingest,
    state,
    entity_checks,
    key_checks,
    storms,
    output
);
criterion_main!(benches);

/// A generated JSON record's key or value as text.
fn text(bytes: &Option<Vec<u8>>) -> Option<&str> {
    bytes
        .as_deref()
        .map(|b| std::str::from_utf8(b).expect("a JSON record"))
}
