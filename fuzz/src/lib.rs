//! What vigil's fuzz targets share: how each one reads its input and calls
//! the decoders, and the fixed schemas and configuration they decode with.
//! The binaries in `src/bin/` are one target each (and `seeds`, which
//! writes their seed corpora); each is a call of one function here inside
//! `afl::fuzz!`.
//!
//! Every function calls vigil's real decoders through its public API and
//! checks what holds for any input: no panic (AFL counts one as a crash),
//! and no claim that valid JSON is not JSON. The allocation bound is AFL's
//! memory limit (`-m`, set by `./dev.sh fuzz`): an allocation past it
//! aborts, and that is a crash too.

use std::sync::Arc;

use serde::de::IgnoredAny;
use vigil::config::Config;
use vigil::dead_letter::{Reason, RecordError};
use vigil::formats::{
    self, DecodedCdc, Flattened, KcatBuffers, decode_avro_envelope, decode_avro_key, decode_cdc,
    decode_protobuf_envelope, decode_protobuf_key, framed, framed_apicurio, row_hash,
};
use vigil::ingest::{Ingest, RawInput, Record, Stream};
use vigil::model::{Op, Provenance};
use vigil::registry::{ProtoSchema, WriterSchema};
use vigil::telemetry::Stats;
use vigil::workload::avro::AvroTable;
use vigil::workload::encode::{GenChange, GenRow};
use vigil::workload::protobuf::ProtoTable;

/// The topic the generated Avro and Protobuf tables are written to.
pub const GEN_TOPIC: &str = "gen.public.t0";

/// The schema ids the generated tables are framed with: the Avro value and
/// key, then the Protobuf value and key. Any other id is unknown.
pub const AVRO_VALUE_ID: u32 = 1;
pub const AVRO_KEY_ID: u32 = 2;
pub const PROTO_VALUE_ID: u32 = 3;
pub const PROTO_KEY_ID: u32 = 4;

/// The `[[tables]]` the `ingest` target maps with: the tables of
/// `tests/data/samples/` and `tests/data/formats/`, with every kind of
/// version, a flattened table and a flattened topic.
pub const INGEST_CONFIG: &str = include_str!("../ingest.toml");

/// The generated table in Avro, with its ids.
pub fn avro_table() -> AvroTable {
    AvroTable::new(GEN_TOPIC, 0, AVRO_VALUE_ID)
}

/// The generated table in Protobuf, with its ids.
pub fn proto_table() -> ProtoTable {
    ProtoTable::new(GEN_TOPIC, 0, PROTO_VALUE_ID)
}

/// The Avro writer schemas (value, key) of the generated table, parsed as
/// the registry client parses what it fetches; the decoder's allocations
/// are bounded as `vigil` bounds them for records of the default
/// `inputs.max_record_bytes`.
pub fn avro_schemas() -> (WriterSchema, WriterSchema) {
    formats::bound_avro_allocations(vigil::config::InputsConfig::default().max_record_bytes.0);
    let table = avro_table();
    let parse = |id, text: &str| {
        WriterSchema::parse(id, text, &[]).expect("the generated Avro schemas parse")
    };
    (
        parse(table.value.id, &table.value.text),
        parse(table.key.id, &table.key.text),
    )
}

/// The Protobuf schemas (value, key) of the generated table, compiled as
/// the registry client compiles what it fetches.
pub fn proto_schemas() -> (ProtoSchema, ProtoSchema) {
    let table = proto_table();
    let compile = |id, text: &str| {
        ProtoSchema::compile(id, text, &[]).expect("the generated Protobuf schemas compile")
    };
    (
        compile(table.value.id, &table.value.text),
        compile(table.key.id, &table.key.text),
    )
}

/// Changes of every operation, to encode as seeds.
pub fn gen_changes() -> Vec<GenChange> {
    let row = |id, version, note| GenRow { id, version, note };
    let change = |op, before, after, position: u64| GenChange {
        table: 0,
        op,
        before,
        after,
        commit_ts_ms: 1_700_000_000_000 + position as i64,
        position,
        tx_id: 700 + position,
        tx: None,
    };
    vec![
        change(Op::Create, None, Some(row(1, 1, "")), 10),
        change(Op::Update, Some(row(1, 1, "")), Some(row(1, 2, "x")), 11),
        change(Op::Delete, Some(row(1, 2, "x")), None, 12),
        change(Op::Read, None, Some(row(1_000_000_007, 0, "snapshot")), 13),
    ]
}

/// Fails when a decoder calls valid JSON invalid: whatever else is wrong
/// with a record that parses, it is not `invalid_json`. Valid: it parses,
/// and no string of it escapes half of a UTF-16 surrogate pair alone
/// (`"\uD999"`), which no decoder can turn into text.
fn assert_not_invalid_json(text: &str, error: &RecordError) {
    if error.reason == Reason::InvalidJson {
        assert!(
            serde_json::from_str::<IgnoredAny>(text).is_err() || has_lone_surrogate(text),
            "valid JSON reported as invalid: {error}"
        );
    }
}

/// Whether a string of `text` (JSON that parses) holds a `\u` escape of a
/// UTF-16 surrogate that is not half of a pair: a trailing surrogate first,
/// or a leading one not followed at once by a trailing one. serde_json
/// rejects one in any string it decodes, as a decoder does; skipping a
/// value (`IgnoredAny`) does not look at it.
fn has_lone_surrogate(text: &str) -> bool {
    const LEADING: std::ops::RangeInclusive<u16> = 0xD800..=0xDBFF;
    const TRAILING: std::ops::RangeInclusive<u16> = 0xDC00..=0xDFFF;
    let bytes = text.as_bytes();
    // The unit of the `\uXXXX` escape at `at`, if there is one.
    let escape = |at: usize| -> Option<u16> {
        let hex = bytes.get(at..at + 6)?.strip_prefix(b"\\u")?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    // Text that parses has backslashes only inside strings.
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape(i) {
            Some(unit) if TRAILING.contains(&unit) => return true,
            Some(unit) if LEADING.contains(&unit) => {
                if !escape(i + 6).is_some_and(|next| TRAILING.contains(&next)) {
                    return true;
                }
                i += 12;
            }
            Some(_) => i += 6,
            // Any other escape: the backslash and the character it escapes.
            None => i += 2,
        }
    }
    false
}

/// Hashes every row image of a decoded record, as the detectors do.
fn hash_rows(decoded: &DecodedCdc<'_>) {
    if let DecodedCdc::Changes(changes) = decoded {
        for change in changes {
            for row in change.before.iter().chain(&change.after) {
                row_hash(row);
            }
        }
    }
}

/// A CDC value (Debezium JSON in every form, Maxwell, Canal: the format is
/// recognised per record) and the same bytes as a Kafka key.
pub fn cdc(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for flattened in [Flattened::Nowhere, Flattened::Everywhere] {
        match decode_cdc(Some(&text), flattened) {
            Ok(decoded) => hash_rows(&decoded),
            Err(e) => assert_not_invalid_json(&text, &e),
        }
    }
    if let Some(row) = formats::decode_key(&text) {
        row_hash(&row);
    }
}

/// A cache event.
pub fn cache(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = formats::decode_cache(&text, Some(1_700_000_000_000)) {
        assert_not_invalid_json(&text, &e);
    }
}

/// A `kcat -J` line, read as `vigil check` reads one, and its owned copy.
pub fn kcat(buffers: &mut KcatBuffers, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(Ok(line)) = buffers.parse(&text) {
        let record = line.to_record();
        assert_eq!(record.payload.as_deref(), line.payload);
        assert_eq!(record.key.as_deref(), line.key);
    }
}

/// Bytes in Confluent's framing, decoded with the schema their id names
/// (as a CDC value and as a key).
fn decode_avro(schemas: &(WriterSchema, WriterSchema), id: u32, datum: &[u8]) {
    let (value, key) = schemas;
    if id == value.id {
        if let Ok(envelope) = decode_avro_envelope(value, datum)
            && let Ok(decoded) = envelope.view()
        {
            hash_rows(&decoded);
        }
    } else if id == key.id
        && let Ok(Some(key)) = decode_avro_key(key, datum)
    {
        row_hash(&key.row());
    }
}

fn decode_protobuf(schemas: &(ProtoSchema, ProtoSchema), id: u32, payload: &[u8]) {
    let (value, key) = schemas;
    if id == value.id {
        if let Ok(envelope) = decode_protobuf_envelope(value, payload)
            && let Ok(decoded) = envelope.view()
        {
            hash_rows(&decoded);
        }
    } else if id == key.id
        && let Ok(Some(key)) = decode_protobuf_key(key, payload)
    {
        row_hash(&key.row());
    }
}

/// A Debezium record in Confluent's Avro framing, with the generated
/// table's writer schemas.
pub fn avro(schemas: &(WriterSchema, WriterSchema), data: &[u8]) {
    if let Some(f) = framed(data) {
        decode_avro(schemas, f.schema_id, f.datum);
    }
}

/// A Debezium record in Confluent's Protobuf framing (message indexes,
/// then the message), with the generated table's schemas.
pub fn protobuf(schemas: &(ProtoSchema, ProtoSchema), data: &[u8]) {
    if let Some(f) = framed(data) {
        decode_protobuf(schemas, f.schema_id, f.datum);
    }
}

/// A record in Apicurio's framing (an 8-byte global id): Avro or Protobuf
/// by the id, as the registry would serve the schema.
pub fn apicurio(
    avro: &(WriterSchema, WriterSchema),
    proto: &(ProtoSchema, ProtoSchema),
    data: &[u8],
) {
    let Some(f) = framed_apicurio(data) else {
        return;
    };
    let Ok(id) = u32::try_from(f.global_id) else {
        return;
    };
    decode_avro(avro, id, f.datum);
    decode_protobuf(proto, id, f.datum);
}

/// A configuration file: parsed and validated as `vigil` loads one (no
/// environment overrides), then checked for each mode.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = Config::parse_with_env("fuzz.toml", &text, std::iter::empty()) {
        let _ = config.validate_for_run();
        let _ = config.validate_for_files("vigil check");
    }
}

/// The configuration and statistics the `ingest` target runs with.
pub fn ingest_setup() -> Ingest {
    let config = Config::parse_with_env("ingest.toml", INGEST_CONFIG, std::iter::empty())
        .expect("fuzz/ingest.toml is a valid configuration");
    Ingest::new(&config, Arc::new(Stats::default())).expect("no schema registry to set up")
}

/// The flags of an `ingest` input's first byte.
pub const CACHE: u8 = 1;
pub const FROM_FILE: u8 = 2;
pub const TOMBSTONE: u8 = 4;
pub const NO_KEY: u8 = 8;
pub const FLATTENED_TOPIC: u8 = 16;

/// An `ingest` input: a first byte of flags ([`CACHE`] rather than CDC,
/// [`FROM_FILE`] rather than a topic, [`TOMBSTONE`], [`NO_KEY`], on a topic
/// of `inputs.flattened_topics`: [`FLATTENED_TOPIC`]), then the key, a
/// newline, the value. A record with no newline is all value.
pub struct IngestInput<'a> {
    pub raw: RawInput<'a>,
    pub provenance: Provenance,
}

impl<'a> IngestInput<'a> {
    pub fn split(data: &'a [u8]) -> Option<Self> {
        let (&flags, rest) = data.split_first()?;
        let (key, value) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let stream = if flags & CACHE == 0 {
            Stream::Cdc
        } else {
            Stream::Cache
        };
        let from_file = flags & FROM_FILE != 0;
        let topic = match (from_file, flags & FLATTENED_TOPIC != 0) {
            (true, _) => "cdc.ndjson",
            (false, true) => "cdc.flat",
            (false, false) => "cdc",
        };
        Some(IngestInput {
            raw: RawInput {
                stream,
                key: key.filter(|_| flags & NO_KEY == 0),
                value: (flags & TOMBSTONE == 0).then_some(value),
                timestamp_ms: Some(1_700_000_000_000),
            },
            provenance: Provenance {
                topic: Arc::from(topic),
                partition: 0,
                offset: 1,
                from_file,
            },
        })
    }

    /// The bytes [`IngestInput::split`] reads back as this record; `flags`
    /// adds [`FROM_FILE`] or [`FLATTENED_TOPIC`].
    pub fn join(stream: Stream, key: Option<&[u8]>, value: Option<&[u8]>, flags: u8) -> Vec<u8> {
        let mut flags = flags;
        if stream == Stream::Cache {
            flags |= CACHE;
        }
        if value.is_none() {
            flags |= TOMBSTONE;
        }
        if key.is_none() {
            flags |= NO_KEY;
        }
        let mut out = vec![flags];
        out.extend_from_slice(key.unwrap_or_default());
        out.push(b'\n');
        out.extend_from_slice(value.unwrap_or_default());
        out
    }
}

/// One raw record through decode and map, as every source hands it over.
/// A record is taken whole or not at all.
pub fn ingest(ingest: &Ingest, out: &mut Vec<Record>, data: &[u8]) {
    let Some(input) = IngestInput::split(data) else {
        return;
    };
    out.clear();
    if ingest.ingest(input.raw, &input.provenance, out).is_err() {
        assert!(out.is_empty(), "a record that failed left records behind");
    }
}
