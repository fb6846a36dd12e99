//! What the binary decoders (Avro, Protobuf) share: the reading of a
//! Debezium envelope from a decoded record's fields, whatever the wire
//! format ([`Fields`], [`read_envelope`]), the envelope and key they own
//! ([`BinaryEnvelope`], [`BinaryKey`]), and the JSON text each column value
//! is written as.
//!
//! A row of the format-neutral view holds each column's JSON text, so a
//! binary decoder writes each column value as the JSON text that Debezium's
//! JSON converter gives for it (numbers, strings, base64 for bytes, objects
//! for records and maps), with one difference: a decimal is the decimal
//! number itself, as the JSON converter writes it with
//! `decimal.format=NUMERIC`. Key templates, primary keys and version columns
//! then read binary rows as they read JSON ones.

pub(in crate::formats) mod avro;
pub(in crate::formats) mod framing;
pub(in crate::formats) mod protobuf;

use std::borrow::Cow;

use num_bigint::BigInt;
use serde::Serializer;
use serde_json::value::RawValue;

use crate::dead_letter::{Reason, RecordError};
use crate::formats::cdc::{self, SourceMeta, Transaction, transaction};
use crate::formats::json::{Field, Object, millis};
use crate::formats::{DecodedCdc, Row, Skip};
use crate::model::{Millis, Op};

/// Column names and their values as JSON text.
pub(in crate::formats) type OwnedRow = Vec<(String, Box<RawValue>)>;

/// A Debezium envelope decoded from a binary record, owning its column
/// texts.
#[derive(Debug)]
pub enum BinaryEnvelope {
    Change(Box<EnvelopeParts>),
    /// A transaction's BEGIN or END record (Debezium's
    /// `TransactionMetadataValue`): its fields as JSON text, read by the
    /// JSON decoder's reader of such records.
    Transaction(OwnedRow),
    /// A heartbeat with its `ts_ms` (see [`DecodedCdc::Heartbeat`]).
    Heartbeat(Millis),
    Skipped(Skip),
}

#[derive(Debug)]
pub struct EnvelopeParts {
    op: Op,
    before: Option<OwnedRow>,
    after: Option<OwnedRow>,
    /// The `source` block's fields as JSON text, read by the same
    /// [`SourceMeta`] as a JSON record's.
    source: OwnedRow,
    ts_ms: Option<Box<RawValue>>,
    tx_id: Option<String>,
    tx_order: Option<u64>,
}

/// A Kafka key decoded from a binary record: its fields as a row.
#[derive(Debug)]
pub struct BinaryKey(pub(in crate::formats) OwnedRow);

impl BinaryKey {
    /// The key's columns, as [`super::decode_key`] gives a JSON key's.
    pub fn row(&self) -> Row<'_> {
        borrow(&self.0)
    }
}

fn borrow(row: &OwnedRow) -> Row<'_> {
    row.iter()
        .map(|(name, value)| (Cow::Borrowed(name.as_str()), &**value))
        .collect()
}

/// A decoded record (an Avro record, a Protobuf message) as the envelope
/// reader asks for its fields. A field that is absent or null is `None`.
pub(in crate::formats) trait Fields: Sized {
    /// Whether the record's schema has a field of this name.
    fn has(&self, name: &str) -> bool;
    /// How many fields the record's schema has.
    fn field_count(&self) -> usize;
    /// The names of the record's fields, in schema order.
    fn names(&self) -> Vec<String>;
    /// A string field.
    fn string(&self, name: &'static str) -> Result<Option<&str>, RecordError>;
    /// A non-negative integer field.
    fn count(&self, name: &'static str) -> Result<Option<u64>, RecordError>;
    /// A record field.
    fn record(&self, name: &'static str) -> Result<Option<Self>, RecordError>;
    /// A field's value as JSON text.
    fn text(&self, name: &'static str) -> Result<Option<Box<RawValue>>, RecordError>;
    /// All of the record's fields as a row.
    fn row(&self) -> Result<OwnedRow, RecordError>;
}

/// Reads a binary record as Debezium's: the same marks as a JSON record's
/// (see `recognise::decode_by_shape`); a record with none of them is
/// `unknown_format`, with `what` naming it in the message.
pub(in crate::formats) fn read_envelope<F: Fields>(
    top: &F,
    what: impl FnOnce() -> String,
) -> Result<BinaryEnvelope, RecordError> {
    let has = |name: &str| top.has(name);
    if has("id") && has("status") && has("event_count") {
        Ok(BinaryEnvelope::Transaction(top.row()?))
    } else if top.field_count() == 1 && has("ts_ms") {
        // A heartbeat whose time does not read as one is still a heartbeat.
        let ts = top.count("ts_ms").ok().flatten();
        Ok(ts.and_then(|ts| Millis::try_from(ts).ok()).map_or(
            BinaryEnvelope::Skipped(Skip::Heartbeat),
            BinaryEnvelope::Heartbeat,
        ))
    } else if has("op") && (has("before") || has("after") || has("source")) {
        envelope(top)
    } else if has("ddl") && has("tableChanges") {
        Ok(BinaryEnvelope::Skipped(Skip::Ddl))
    } else {
        let mut names = top.names();
        names.sort_unstable();
        names.truncate(16);
        Err(RecordError::new(
            Reason::UnknownFormat,
            format!(
                "{} that is not a Debezium change event (fields {names:?})",
                what()
            ),
        ))
    }
}

fn envelope<F: Fields>(top: &F) -> Result<BinaryEnvelope, RecordError> {
    let code = top
        .string("op")?
        .ok_or_else(|| RecordError::new(Reason::MissingField, "field \"op\" is missing"))?;
    let Some(op) = cdc::parse_op(code, Field::new("op"))? else {
        return Ok(BinaryEnvelope::Skipped(Skip::LogicalMessage));
    };
    let row = |name: &'static str| -> Result<Option<OwnedRow>, RecordError> {
        top.record(name)?.map(|r| r.row()).transpose()
    };
    let before = row("before")?;
    let after = row("after")?;
    let source = row("source")?.unwrap_or_default();
    let ts_ms = top.text("ts_ms")?;
    let (mut tx_id, mut tx_order) = (None, None);
    if let Some(block) = top.record("transaction")? {
        tx_id = block.string("id")?.map(str::to_owned);
        tx_order = block.count("total_order")?;
    }
    Ok(BinaryEnvelope::Change(Box::new(EnvelopeParts {
        op,
        before,
        after,
        source,
        ts_ms,
        tx_id,
        tx_order,
    })))
}

pub(in crate::formats) fn wrong_type(name: &str, expected: &str) -> RecordError {
    RecordError::new(
        Reason::WrongType,
        format!("field \"{name}\" is not {expected}"),
    )
}

impl BinaryEnvelope {
    /// The change, as the JSON decoders give it: the source block read by
    /// [`SourceMeta`], the parts put together by [`cdc::change`].
    pub fn view(&self) -> Result<DecodedCdc<'_>, RecordError> {
        let parts = match self {
            BinaryEnvelope::Skipped(skip) => return Ok(DecodedCdc::Skipped(*skip)),
            BinaryEnvelope::Heartbeat(ts) => return Ok(DecodedCdc::Heartbeat(*ts)),
            BinaryEnvelope::Transaction(fields) => {
                let object = Object::top(borrow(fields));
                return if transaction::is_marker(&object) {
                    transaction::decode(&object)
                } else {
                    Err(RecordError::new(
                        Reason::UnknownFormat,
                        "a transaction metadata record whose status is neither BEGIN nor END",
                    ))
                };
            }
            BinaryEnvelope::Change(parts) => parts,
        };
        let mut source = SourceMeta::default();
        for (name, value) in &parts.source {
            source.read(name, value, Field::nested("source", name))?;
        }
        source.envelope_ts_ms = parts
            .ts_ms
            .as_deref()
            .map(|v| millis(v, Field::new("ts_ms")))
            .transpose()?;
        let transaction = Transaction {
            id: parts.tx_id.as_deref().map(Cow::Borrowed),
            total_order: parts.tx_order,
        };
        Ok(cdc::change(
            parts.op,
            parts.before.as_ref().map(borrow),
            parts.after.as_ref().map(borrow),
            source,
            transaction,
        ))
    }
}

/// Serialises a float as the JSON converter writes it: a number, or for
/// NaN and the infinities (which have no JSON number) the value's text.
pub(in crate::formats) fn serialize_float<S: Serializer>(f: f64, s: S) -> Result<S::Ok, S::Error> {
    if f.is_finite() {
        s.serialize_f64(f)
    } else {
        s.collect_str(&f)
    }
}

/// The largest scale a decimal is written with: past it the scale is
/// malformed (it would fill memory with zeros).
const MAX_DECIMAL_SCALE: usize = 1000;

/// A decimal number of an unscaled integer and a scale, as JSON text;
/// `None` for a scale past [`MAX_DECIMAL_SCALE`].
pub(in crate::formats) fn decimal_text(unscaled: &BigInt, scale: usize) -> Option<Box<RawValue>> {
    if scale > MAX_DECIMAL_SCALE {
        return None;
    }
    let digits = unscaled.magnitude().to_string();
    let sign = if unscaled.sign() == num_bigint::Sign::Minus {
        "-"
    } else {
        ""
    };
    let text = if scale == 0 {
        format!("{sign}{digits}")
    } else {
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{sign}{int}.{frac}")
    };
    RawValue::from_string(text).ok()
}
