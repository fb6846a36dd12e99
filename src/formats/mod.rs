//! Decoders: bytes of one input record in, a format-neutral view out.
//!
//! CDC values are decoded by [`decode_cdc`] (Debezium with or without the
//! `schema`/`payload` wrapper or in the CloudEvents converter's form,
//! Debezium flattened by `ExtractNewRecordState` where declared, Maxwell,
//! Canal), their Kafka keys by [`decode_key`]; Debezium values and keys in
//! a schema registry's framing (recognised by [`framed`] or
//! [`framed_apicurio`]) by [`decode_avro_envelope`] and [`decode_avro_key`]
//! with their Avro writer schema, or [`decode_protobuf_envelope`] and
//! [`decode_protobuf_key`] with their Protobuf schema; cache events by
//! [`decode_cache`], and `kcat -J` lines by [`KcatBuffers::parse`] (or
//! [`parse_kcat_line`] for an owned copy).
//! Decoders borrow from the input or own what they decoded, and do no I/O;
//! every failure is a [`RecordError`] with a reason code.
//!
//! The modules form a tree whose leaves import nothing of their siblings,
//! only what their parent or the helpers hold:
//!
//! - `recognise`: the one place a JSON CDC value's format (and a key's
//!   shape) is recognised, handing it to the decoder of that format;
//! - `json`: the borrowed JSON helpers every text decoder uses, with
//!   `json::timestamp` (times in text) and `json::unescape` (JSON string
//!   escapes);
//! - `cdc`: what every reader of a Debezium change shares (operation codes,
//!   source metadata, the transaction block), and one leaf a JSON CDC
//!   format: `debezium`, `flat`, `cloudevents`, `maxwell`, `canal`,
//!   `transaction` (Debezium's transaction metadata);
//! - `binary`: the envelope reader the binary formats share, and the leaves
//!   `framing` (Confluent's and Apicurio's headers), `avro`, `protobuf`;
//! - `cache` (cache events) and `kcat` (`kcat -J` lines).

mod binary;
mod cache;
mod cdc;
mod json;
mod kcat;
mod recognise;
#[cfg(test)]
pub(crate) mod testing;

use std::borrow::Cow;

use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::dead_letter::RecordError;
use crate::model::{Millis, Op};

pub use binary::avro::{
    bound_allocations as bound_avro_allocations, decode_envelope as decode_avro_envelope,
    decode_key as decode_avro_key,
};
pub use binary::framing::{Framed, GlobalFramed, confluent_opening, framed, framed_apicurio};
pub use binary::protobuf::{
    decode_envelope as decode_protobuf_envelope, decode_key as decode_protobuf_key,
};
pub use binary::{BinaryEnvelope, BinaryKey};
pub use cache::decode_cache;
pub use json::timestamp::parse_rfc3339;
pub use json::unescape::{UnescapeError, unescape};
pub use json::{Scalar, row_hash, scalar};
pub use kcat::{Headers, KcatBuffers, KcatLine, KcatRecord, parse_kcat_line};
#[cfg(test)]
pub(crate) use testing::mysql_update as avro_mysql_update;

/// One row image: column names and their undecoded JSON values, in the order
/// of the record. Up to two columns are held inline, so that a Kafka key
/// such as `{"id":1}` needs no allocation.
pub type Row<'a> = SmallVec<[Column<'a>; 2]>;

/// A column of a [`Row`]: its name and undecoded JSON value. Code that only
/// reads a row takes a slice of columns, which (unlike the row) shortens
/// its lifetime where two rows of different lifetimes meet.
pub type Column<'a> = (Cow<'a, str>, &'a RawValue);

/// Finds a column of a row image.
pub fn column<'a>(row: &[Column<'a>], name: &str) -> Option<&'a RawValue> {
    row.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Which CDC format a record was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdcFormat {
    Debezium,
    DebeziumFlat,
    Maxwell,
    Canal,
}

/// The table a change belongs to, as the record names it. Mapping resolves it
/// against `[[tables]]`: `schema.table`, then `db.table`, then the bare name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableRef<'a> {
    /// PostgreSQL schema (Debezium `source.schema`, flattened `__schema`).
    pub schema: Option<Cow<'a, str>>,
    /// Database (Debezium `source.db`, Maxwell/Canal `database`, flattened `__db`).
    pub db: Option<Cow<'a, str>>,
    /// Table name; `None` when the record does not say (a flattened record
    /// without `__table`): the caller then falls back to the topic name.
    pub table: Option<Cow<'a, str>>,
}

/// Position and time metadata of a change, from which versions and the
/// commit time are derived. Every field is optional: formats carry different
/// subsets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourcePos<'a> {
    /// Commit time in ms: Debezium `source.ts_ms` (when > 0), else
    /// `source.ts_us`/1000, `source.ts_usec`/1000, the envelope `ts_ms`;
    /// flattened `__source_ts_ms`, else `__ts_ms`; Maxwell `ts_ms`, else
    /// `ts`*1000; Canal `es`, else `ts`. `None` when the record has none (the
    /// caller falls back to the Kafka timestamp).
    pub commit_ts_ms: Option<Millis>,
    /// PostgreSQL change LSN (Debezium `source.lsn`, flattened `__lsn`).
    pub lsn: Option<u64>,
    /// PostgreSQL commit LSN: the first element of Debezium's
    /// `source.sequence` (`"[\"last_commit_lsn\",\"lsn\"]"`).
    pub commit_lsn: Option<u64>,
    /// MySQL binlog file index (`mysql-bin.000003` -> 3): Debezium
    /// `source.file`, Maxwell `position` before the `:`.
    pub binlog_file: Option<u64>,
    /// MySQL binlog position: Debezium `source.pos`, Maxwell `position` after the `:`.
    pub binlog_pos: Option<u64>,
    /// Row within the binlog event: Debezium `source.row`.
    pub binlog_row: Option<u64>,
    /// Transaction number of a GTID (`uuid:23` -> 23): Debezium `source.gtid`.
    pub gtid_seq: Option<u64>,
    /// Transaction id: Debezium `transaction.id`, else `source.txId`; Maxwell
    /// `xid` (Canal's `id` numbers a batch of Canal's, not a transaction).
    pub tx_id: Option<Cow<'a, str>>,
    /// Order of the change within its transaction: Debezium
    /// `transaction.total_order`, Maxwell `xoffset`, Canal row index.
    pub tx_order: Option<u64>,
    /// The last row of its transaction: Maxwell `commit`.
    pub tx_last: bool,
}

/// The changes of one record: most formats carry one, held inline.
pub type RawChanges<'a> = SmallVec<[RawChange<'a>; 1]>;

/// A change as a format describes it, before mapping to cache keys.
/// Equality compares row values by their raw JSON text.
#[derive(Debug, Clone)]
pub struct RawChange<'a> {
    pub format: CdcFormat,
    pub table: TableRef<'a>,
    pub op: Op,
    /// Row before the change (updates with a before image, deletes). For
    /// Maxwell and Canal updates: the after image overlaid with `old`.
    pub before: Option<Row<'a>>,
    /// Row after the change (creates, updates, snapshot reads).
    pub after: Option<Row<'a>>,
    /// Primary-key column names the record itself declares (Maxwell
    /// `primary_key_columns`, Canal `pkNames`).
    pub pk_columns: Option<Vec<Cow<'a, str>>>,
    pub pos: SourcePos<'a>,
}

// `RawValue` has no `PartialEq`: rows compare by names and raw value text.
impl PartialEq for RawChange<'_> {
    fn eq(&self, other: &Self) -> bool {
        fn same_rows(a: &Option<Row>, b: &Option<Row>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => {
                    a.len() == b.len()
                        && a.iter()
                            .zip(b)
                            .all(|((n, v), (m, w))| n == m && v.get() == w.get())
                }
                _ => a.is_none() && b.is_none(),
            }
        }
        let RawChange {
            format,
            table,
            op,
            before,
            after,
            pk_columns,
            pos,
        } = self;
        *format == other.format
            && *table == other.table
            && *op == other.op
            && same_rows(before, &other.before)
            && same_rows(after, &other.after)
            && *pk_columns == other.pk_columns
            && *pos == other.pos
    }
}

impl Eq for RawChange<'_> {}

/// Records that are recognised and counted but carry no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// A null value (a Kafka tombstone).
    Tombstone,
    /// A Debezium heartbeat (`{"ts_ms": ...}` only).
    Heartbeat,
    /// A Debezium transaction BEGIN/END record (when transaction checks
    /// are off, or in Avro).
    TransactionMetadata,
    /// A Debezium logical-decoding message (`op` = `m`).
    LogicalMessage,
    /// A schema change (Canal `isDdl`, Maxwell `table-create`..., a Debezium
    /// schema-change event with `ddl` and `tableChanges`).
    Ddl,
    /// Maxwell `bootstrap-start` / `bootstrap-complete` markers.
    BootstrapMarker,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Skip::Tombstone,
        Skip::Heartbeat,
        Skip::TransactionMetadata,
        Skip::LogicalMessage,
        Skip::Ddl,
        Skip::BootstrapMarker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Tombstone => "tombstone",
            Skip::Heartbeat => "heartbeat",
            Skip::TransactionMetadata => "transaction_metadata",
            Skip::LogicalMessage => "logical_message",
            Skip::Ddl => "ddl",
            Skip::BootstrapMarker => "bootstrap_marker",
        }
    }
}

/// Whether a transaction metadata record opens or closes its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStatus {
    Begin,
    End,
}

/// A Debezium transaction BEGIN or END record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxMarker<'a> {
    pub status: TxStatus,
    /// The transaction's id, as the changes' `transaction.id` give it.
    pub id: Cow<'a, str>,
    pub ts_ms: Option<Millis>,
    /// END: the events the transaction wrote, over every table.
    pub event_count: Option<u64>,
    /// END: the events per table, by the name Debezium gives the table
    /// (`schema.table` or `db.table`).
    pub data_collections: Vec<(Cow<'a, str>, u64)>,
}

/// What one CDC value decodes to. Returned once a record and taken apart at
/// once: boxing its change would cost the allocation that holding it inline
/// saves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum DecodedCdc<'a> {
    /// One change per row (a Canal message can carry several rows).
    Changes(RawChanges<'a>),
    /// A transaction's BEGIN or END.
    Transaction(TxMarker<'a>),
    /// A Debezium heartbeat, with its `ts_ms`: nothing to check, but the
    /// time moves its partition's event time (a partition that carries only
    /// heartbeats would otherwise hold the watermark back).
    Heartbeat(Millis),
    Skipped(Skip),
}

/// Where a record without the marks of any format is read as a row
/// flattened by Debezium's `ExtractNewRecordState`: on the tables declared
/// `format = "flattened"` only, so that a stray object is a dead letter
/// rather than a change.
#[derive(Clone, Copy)]
pub enum Flattened<'f> {
    /// On no table: every such record is `unknown_format`.
    Nowhere,
    /// On every table (a topic declared flattened).
    Everywhere,
    /// On the tables for which the function says so. It is given the table
    /// the row names (`__table`, `__db`, `__schema`), with no name when the
    /// row has none (the caller then goes by the topic).
    Tables(&'f dyn Fn(&TableRef<'_>) -> bool),
}

impl Flattened<'_> {
    pub(crate) fn reads(&self, table: &TableRef<'_>) -> bool {
        match self {
            Flattened::Nowhere => false,
            Flattened::Everywhere => true,
            Flattened::Tables(declared) => declared(table),
        }
    }
}

/// Decodes one CDC message value; `None` is a tombstone (null value).
/// The format is recognised per record, by its own marks; `flattened` says
/// where a record without any is a flattened row.
pub fn decode_cdc<'a>(
    value: Option<&'a str>,
    flattened: Flattened<'_>,
) -> Result<DecodedCdc<'a>, RecordError> {
    match value {
        None => Ok(DecodedCdc::Skipped(Skip::Tombstone)),
        Some(text) => recognise::decode_cdc_text(text, flattened),
    }
}

/// Decodes a Kafka message key into primary-key columns: a Debezium key
/// (`{"id": 1}` or `{"schema": ..., "payload": {"id": 1}}`), a Maxwell key
/// (`{"database": ..., "table": ..., "pk.id": 1}` or
/// `["db", "table", [{"id": 1}]]`). Any other key (not JSON, a scalar, an
/// empty object) gives `None`: the primary key then comes from the row.
pub fn decode_key(key: &str) -> Option<Row<'_>> {
    recognise::decode_key_text(key)
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use serde_json::Value;

    use super::testing::{data_file, samples};
    use super::*;
    use crate::dead_letter::Reason;

    /// Every fixture line and every sample value and key.
    static CORPUS: LazyLock<Vec<String>> = LazyLock::new(corpus);

    fn corpus() -> Vec<String> {
        let mut corpus = Vec::new();
        for name in [
            "debezium-postgres",
            "debezium-mysql",
            "debezium-flattened",
            "debezium-cloudevents",
            "maxwell",
            "canal",
            "cache-events",
            "kcat",
        ] {
            let text = data_file(&format!("formats/{name}.ndjson"));
            corpus.extend(text.lines().map(str::to_owned));
        }
        for name in [
            "debezium-postgres",
            "debezium-mysql",
            "debezium-metadata",
            "debezium-flattened",
            "debezium-cloudevents",
            "maxwell",
            "canal",
        ] {
            let text = data_file(&format!("samples/{name}.ndjson"));
            for sample in samples(&text) {
                corpus.push(sample.value.get().to_owned());
                corpus.push(sample.key.get().to_owned());
            }
        }
        corpus
    }

    /// Runs every decoder on a text. None may panic, valid JSON is never
    /// reported as invalid, and declaring flattened tables changes only
    /// what no format's marks fit: a flattened row there, `unknown_format`
    /// elsewhere.
    fn decode_all(text: &str) {
        let valid = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        let not_invalid = |e: &RecordError| !(valid && e.reason == Reason::InvalidJson);
        if let Some(one_pass) = cdc::debezium::decode_one_pass(text) {
            assert_eq!(
                recognise::decode_by_shape(text, Flattened::Nowhere).as_ref(),
                Ok(&one_pass),
                "{text}: the one-pass reader and the general one disagree"
            );
        }
        let strict = decode_cdc(Some(text), Flattened::Nowhere);
        let everywhere = decode_cdc(Some(text), Flattened::Everywhere);
        match &strict {
            Err(e) if e.reason == Reason::UnknownFormat => {}
            Ok(DecodedCdc::Changes(changes)) => {
                assert!(
                    changes.iter().all(|c| c.format != CdcFormat::DebeziumFlat),
                    "{text}: read as a flattened row where none is declared"
                );
                assert_eq!(strict, everywhere, "{text}");
            }
            _ => assert_eq!(strict, everywhere, "{text}"),
        }
        if let Ok(DecodedCdc::Changes(changes)) = &everywhere
            && changes.iter().any(|c| c.format == CdcFormat::DebeziumFlat)
        {
            assert!(
                matches!(&strict, Err(e) if e.reason == Reason::UnknownFormat),
                "{text}: a flattened row where none is declared is unknown_format"
            );
        }
        match everywhere {
            Ok(DecodedCdc::Changes(changes)) => {
                for change in &changes {
                    change.before.iter().chain(&change.after).for_each(|row| {
                        row_hash(row);
                    });
                }
            }
            Ok(DecodedCdc::Skipped(_) | DecodedCdc::Transaction(_) | DecodedCdc::Heartbeat(_)) => {}
            Err(e) => assert!(not_invalid(&e), "{text}: {e}"),
        }
        if let Some(row) = decode_key(text) {
            row_hash(&row);
        }
        if let Err(e) = decode_cache(text, None) {
            assert!(not_invalid(&e), "{text}: {e}");
        }
        if let Some(Ok(record)) = parse_kcat_line(text) {
            if let Some(payload) = record.payload {
                decode_all(&payload);
            }
            if let Some(key) = record.key {
                decode_key(&key);
            }
        }
    }

    /// The `n`th node of a JSON value, in pre-order.
    fn nth_node(value: &mut Value, n: usize) -> Option<&mut Value> {
        let mut stack = vec![value];
        let mut seen = 0;
        while let Some(node) = stack.pop() {
            if seen == n {
                return Some(node);
            }
            seen += 1;
            match node {
                Value::Array(items) => stack.extend(items.iter_mut().rev()),
                Value::Object(fields) => stack.extend(fields.values_mut().rev()),
                _ => {}
            }
        }
        None
    }

    fn node_count(value: &Value) -> usize {
        1 + match value {
            Value::Array(items) => items.iter().map(node_count).sum(),
            Value::Object(fields) => fields.values().map(node_count).sum(),
            _ => 0,
        }
    }

    const REPLACEMENTS: [&str; 18] = [
        "null",
        "true",
        "0",
        "-1",
        "1.5",
        "1e300",
        "18446744073709551616",
        "\"\"",
        "\"x\"",
        "\"c\"",
        "\"INSERT\"",
        "\"true\"",
        "\"[\\\"1\\\"]\"",
        "\"a:1-\"",
        "[]",
        "[null]",
        "{}",
        "{\"a\":1}",
    ];

    #[test]
    fn the_one_pass_reader_takes_the_usual_debezium_envelopes() {
        for name in ["debezium-postgres", "debezium-mysql"] {
            let text = data_file(&format!("samples/{name}.ndjson"));
            let envelopes: Vec<String> = samples(&text)
                .iter()
                .map(|s| s.value.get().to_owned())
                .filter(|v| v.contains("\"after\""))
                .collect();
            assert!(!envelopes.is_empty(), "{name} has envelopes");
            for value in &envelopes {
                assert!(
                    cdc::debezium::decode_one_pass(value).is_some(),
                    "{name}: {value} is read in one pass"
                );
            }
        }
    }

    #[test]
    fn every_prefix_of_every_record() {
        for text in CORPUS.iter() {
            for end in (0..=text.len()).filter(|&end| text.is_char_boundary(end)) {
                decode_all(&text[..end]);
            }
        }
    }

    #[test]
    fn every_value_replaced_and_every_field_removed() {
        let replacements: Vec<Value> = REPLACEMENTS
            .iter()
            .map(|r| serde_json::from_str(r).expect("valid JSON"))
            .collect();
        for text in CORPUS.iter() {
            let Ok(original) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            for n in 0..node_count(&original) {
                let mutate = |change: &dyn Fn(&mut Value)| {
                    let mut mutated = original.clone();
                    if let Some(node) = nth_node(&mut mutated, n) {
                        change(node);
                    }
                    decode_all(&mutated.to_string());
                };
                for replacement in &replacements {
                    mutate(&|node| *node = replacement.clone());
                }
                let mut node = original.clone();
                if let Some(Value::Object(fields)) = nth_node(&mut node, n) {
                    for name in fields.keys() {
                        mutate(&|node| {
                            if let Value::Object(fields) = node {
                                fields.remove(name);
                            }
                        });
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            decode_all(&text);
        }

        #[test]
        fn json_like_text_never_panics(text in r#"[{}\[\]":,\\a-z0-9 .+-]{0,80}"#) {
            decode_all(&text);
        }

        #[test]
        fn byte_mutations_never_panic(
            pick in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6),
        ) {
            let mut bytes = CORPUS[pick.index(CORPUS.len())].clone().into_bytes();
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = at.index(bytes.len());
                match kind {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, byte),
                    _ => bytes[at] = byte,
                }
            }
            decode_all(&String::from_utf8_lossy(&bytes));
        }
    }
}
