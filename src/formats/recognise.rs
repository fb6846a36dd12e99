//! The one place a JSON CDC value's format is recognised, from the marks of
//! its top-level object (DESIGN.md section 2), and a Kafka key's shape.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::cdc::{canal, cloudevents, debezium, flat, maxwell, transaction};
use super::json::{Field, Top, array, millis, not_an_object, parse, row, unrecognised};
use super::{DecodedCdc, Flattened, Row, Skip, cdc};
use crate::dead_letter::RecordError;

/// Decodes a CDC value, recognising its format from its shape (DESIGN.md
/// section 2). The usual Debezium envelope is read in one pass
/// ([`debezium::decode_one_pass`]); anything else by [`decode_by_shape`].
pub(super) fn decode_cdc_text<'a>(
    text: &'a str,
    flattened: Flattened<'_>,
) -> Result<DecodedCdc<'a>, RecordError> {
    match debezium::decode_one_pass(text) {
        Some(decoded) => Ok(decoded),
        None => decode_by_shape(text, flattened),
    }
}

/// The general reader: parses the top level, recognises the format by the
/// fields that mark it, then decodes the fields of that format. A record
/// that no format's marks fit is a flattened row where `flattened` says so,
/// and `unknown_format` elsewhere.
pub(super) fn decode_by_shape<'a>(
    text: &'a str,
    flattened: Flattened<'_>,
) -> Result<DecodedCdc<'a>, RecordError> {
    let mut object = match parse(text)? {
        Top::Object(object) => object,
        Top::Null => return Ok(DecodedCdc::Skipped(Skip::Tombstone)),
        Top::Other(kind) => return Err(not_an_object(kind)),
    };
    if object.has("schema") && object.has("payload") {
        match object.object("payload")? {
            Some(payload) => object = payload,
            None => return Ok(DecodedCdc::Skipped(Skip::Tombstone)),
        }
    }
    if transaction::is_marker(&object) {
        transaction::decode(&object)
    } else if object.fields.len() == 1 && object.has("ts_ms") {
        // A heartbeat whose time does not read as one is still a heartbeat.
        Ok(object
            .get("ts_ms")
            .and_then(|ts| millis(ts, Field::new("ts_ms")).ok())
            .map_or(DecodedCdc::Skipped(Skip::Heartbeat), DecodedCdc::Heartbeat))
    } else if debezium::is_envelope(&object) {
        debezium::decode(&object)
    } else if cloudevents::matches(&object) {
        cloudevents::decode(&object)
    } else if cdc::is_schema_change(&object) {
        Ok(DecodedCdc::Skipped(Skip::Ddl))
    } else if canal::matches(&object) {
        canal::decode(&object)
    } else if maxwell::matches(&object) {
        maxwell::decode(&object)
    } else if flattened.reads(&flat::table(&object)) {
        flat::decode(object)
    } else {
        Err(unrecognised(&object))
    }
}

/// Decodes a Kafka key into primary-key columns (see [`super::decode_key`]).
pub(super) fn decode_key_text(text: &str) -> Option<Row<'_>> {
    let columns = if text.trim_ascii_start().starts_with('[') {
        maxwell_array_key(text)?
    } else {
        let Top::Object(mut object) = parse(text).ok()? else {
            return None;
        };
        if object.has("schema") && object.has("payload") {
            object = object.object("payload").ok()??;
        }
        strip_pk_prefix(object.fields)
    };
    (!columns.is_empty()).then_some(columns)
}

/// Maxwell's array key: `["db", "table", [{"id": 1}, ...]]`.
fn maxwell_array_key(text: &str) -> Option<Row<'_>> {
    let parts: Vec<&RawValue> = serde_json::from_str(text).ok()?;
    let pk = parts.get(2)?;
    let mut columns = Row::new();
    for part in array(pk, Field::new("pk")).ok()? {
        columns.extend(row(part, Field::new("pk")).ok()?);
    }
    Some(columns)
}

/// Maxwell's hash key (`{"database", "table", "pk.id"}`): keeps the `pk.`
/// columns without their prefix. Other keys are all primary-key columns.
fn strip_pk_prefix(fields: Row<'_>) -> Row<'_> {
    const PREFIX: &str = "pk.";
    if !fields.iter().any(|(name, _)| name.starts_with(PREFIX)) {
        return fields;
    }
    fields
        .into_iter()
        .filter_map(|(name, value)| {
            let name = match name {
                Cow::Borrowed(name) => Cow::Borrowed(name.strip_prefix(PREFIX)?),
                Cow::Owned(name) => Cow::Owned(name.strip_prefix(PREFIX)?.to_owned()),
            };
            Some((name, value))
        })
        .collect()
}
