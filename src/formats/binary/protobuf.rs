//! Debezium change events written by Confluent's Protobuf converter: a
//! magic byte 0, the schema's id (4 bytes, big-endian), the message indexes
//! (a zigzag varint count, then each index; a count of 0 stands for the
//! first message, `[0]`) and the Protobuf encoding of the message they name.
//!
//! The message is decoded dynamically (`prost-reflect`) with the schema the
//! registry serves, compiled once per id, read through [`Fields`] by the
//! envelope reader the binary formats share, and each column written as
//! JSON text (see [`super`]), as Debezium's JSON converter gives
//! the Connect value the converter turned into the message: numbers for
//! integers (`io.debezium.time.*` are `int64`), strings for strings and
//! enum values (their names), base64 for bytes, `true`/`false`, arrays for
//! repeated fields, objects for messages and maps; the converter's types
//! for Connect's logical types by their value: `google.protobuf.Timestamp`
//! as epoch milliseconds, `google.type.Date` as epoch days,
//! `confluent.type.Decimal` and Debezium's `VariableScaleDecimal` as the
//! decimal number, the `google.protobuf.*Value` wrappers as the value they
//! wrap.
//!
//! A field with presence (a message, an `optional` field, a wrapper, a
//! member of a `oneof`) that is not set is null; a proto3 field without
//! presence that is not set has its default value (0, `""`), as the
//! converter's deserializer gives it: the converter writes a null column of
//! such a field as its default, so the two cannot be told apart.

use num_bigint::BigInt;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use super::{
    BinaryEnvelope, BinaryKey, Fields, OwnedRow, decimal_text, read_envelope, serialize_float,
    wrong_type,
};
use crate::dead_letter::{Reason, RecordError, base64};
use crate::formats::json::timestamp::days_from_civil;
use crate::registry::ProtoSchema;

/// At most this many message indexes (nesting levels) are read; past it the
/// header is malformed.
const MAX_INDEXES: usize = 32;

fn invalid(message: impl Into<String>) -> RecordError {
    RecordError::new(Reason::InvalidProtobuf, message)
}

/// A zigzag varint, as the message indexes are written.
fn zigzag(bytes: &mut &[u8]) -> Option<i64> {
    let n = prost::encoding::decode_varint(bytes).ok()?;
    Some((n >> 1) as i64 ^ -((n & 1) as i64))
}

/// The message indexes that open a Protobuf record after its schema id, and
/// the message's bytes after them. An empty list names the first message.
pub fn message_indexes(payload: &[u8]) -> Result<(Vec<usize>, &[u8]), RecordError> {
    let bad = || invalid("the message indexes after the schema id are malformed");
    let mut rest = payload;
    let count = zigzag(&mut rest).ok_or_else(bad)?;
    let count = usize::try_from(count)
        .ok()
        .filter(|n| *n <= MAX_INDEXES)
        .ok_or_else(bad)?;
    let mut indexes = Vec::with_capacity(count);
    for _ in 0..count {
        let index = zigzag(&mut rest).ok_or_else(bad)?;
        indexes.push(usize::try_from(index).map_err(|_| bad())?);
    }
    Ok((indexes, rest))
}

/// The message a payload (message indexes and message) holds.
fn read(schema: &ProtoSchema, payload: &[u8]) -> Result<DynamicMessage, RecordError> {
    let (indexes, bytes) = message_indexes(payload)?;
    let descriptor = schema.message(&indexes).ok_or_else(|| {
        invalid(format!(
            "schema {} has no message at indexes {indexes:?}",
            schema.id
        ))
    })?;
    DynamicMessage::decode(descriptor, bytes).map_err(|e| {
        invalid(format!(
            "the bytes do not decode with schema {}: {e}",
            schema.id
        ))
    })
}

/// Decodes a CDC value in Confluent's Protobuf framing (after the schema
/// id) with its schema.
pub fn decode_envelope(
    schema: &ProtoSchema,
    payload: &[u8],
) -> Result<BinaryEnvelope, RecordError> {
    let message = read(schema, payload)?;
    read_envelope(&Message(&message), || {
        format!(
            "a Protobuf message {} of schema {}",
            message.descriptor().full_name(),
            schema.id
        )
    })
}

/// Decodes a Kafka key in Confluent's Protobuf framing: a message's fields
/// as a row. A message without fields gives `None`, as a JSON key of
/// another shape does.
pub fn decode_key(schema: &ProtoSchema, payload: &[u8]) -> Result<Option<BinaryKey>, RecordError> {
    let message = read(schema, payload)?;
    if message.descriptor().fields().len() == 0 {
        return Ok(None);
    }
    Message(&message).row().map(|row| Some(BinaryKey(row)))
}

/// A decoded message, as the envelope reader asks for its fields.
struct Message<'v>(&'v DynamicMessage);

impl<'v> Message<'v> {
    /// A field's value when set (a field without presence: when it is not
    /// its default), and its descriptor.
    fn get(&self, name: &str) -> Option<(&'v Value, FieldDescriptor)> {
        let field = self.0.descriptor().get_field_by_name(name)?;
        if !self.0.has_field(&field) {
            return None;
        }
        match self.0.get_field(&field) {
            std::borrow::Cow::Borrowed(value) => Some((value, field)),
            std::borrow::Cow::Owned(_) => None,
        }
    }
}

impl Fields for Message<'_> {
    fn has(&self, name: &str) -> bool {
        self.0.descriptor().get_field_by_name(name).is_some()
    }

    fn field_count(&self) -> usize {
        self.0.descriptor().fields().len()
    }

    fn names(&self) -> Vec<String> {
        self.0
            .descriptor()
            .fields()
            .map(|f| f.name().to_string())
            .collect()
    }

    fn string(&self, name: &'static str) -> Result<Option<&str>, RecordError> {
        match self.get(name) {
            None => Ok(None),
            Some((Value::String(s), _)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(name, "a string")),
        }
    }

    fn count(&self, name: &'static str) -> Result<Option<u64>, RecordError> {
        let count = match self.get(name) {
            None => return Ok(None),
            Some((Value::I64(n), _)) => u64::try_from(*n).ok(),
            Some((Value::I32(n), _)) => u64::try_from(*n).ok(),
            Some((Value::U64(n), _)) => Some(*n),
            Some((Value::U32(n), _)) => Some(u64::from(*n)),
            Some(_) => return Err(wrong_type(name, "an integer")),
        };
        count.map(Some).ok_or_else(|| wrong_type(name, "a count"))
    }

    fn record(&self, name: &'static str) -> Result<Option<Self>, RecordError> {
        match self.get(name) {
            None => Ok(None),
            Some((Value::Message(m), _)) => Ok(Some(Message(m))),
            Some(_) => Err(wrong_type(name, "a message")),
        }
    }

    fn text(&self, name: &'static str) -> Result<Option<Box<RawValue>>, RecordError> {
        let Some((value, field)) = self.get(name) else {
            return Ok(None);
        };
        json_text(
            &FieldJson {
                value,
                field: &field,
            },
            name,
        )
        .map(Some)
    }

    fn row(&self) -> Result<OwnedRow, RecordError> {
        self.0
            .descriptor()
            .fields()
            .map(|field| {
                let text = json_text(
                    &Column {
                        message: self.0,
                        field: &field,
                    },
                    field.name(),
                )?;
                Ok((field.name().to_string(), text))
            })
            .collect()
    }
}

/// A value's JSON text, written straight from the message (nothing parsed
/// again).
fn json_text(value: &impl Serialize, name: &str) -> Result<Box<RawValue>, RecordError> {
    serde_json::value::to_raw_value(value)
        .map_err(|e| invalid(format!("field \"{name}\" has no JSON form: {e}")))
}

/// The error of a value that does not fit its kind.
fn mismatch<E: serde::ser::Error>() -> E {
    E::custom("it does not fit its kind")
}

/// A field of a message as a column: null when a field with presence is
/// not set, else its value (a field without presence: its default).
struct Column<'a> {
    message: &'a DynamicMessage,
    field: &'a FieldDescriptor,
}

impl Serialize for Column<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.field.supports_presence() && !self.message.has_field(self.field) {
            return s.serialize_unit();
        }
        FieldJson {
            value: &self.message.get_field(self.field),
            field: self.field,
        }
        .serialize(s)
    }
}

/// A field's value: a list or map as a whole, else one value.
struct FieldJson<'a> {
    value: &'a Value,
    field: &'a FieldDescriptor,
}

impl Serialize for FieldJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = self.field.kind();
        match self.value {
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for value in items {
                    seq.serialize_element(&One { value, kind: &kind })?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let value_kind = match &kind {
                    Kind::Message(entry) => entry.map_entry_value_field().kind(),
                    _ => return Err(mismatch()),
                };
                // In key order, so that equal maps give equal text.
                let mut sorted: Vec<(String, &Value)> =
                    entries.iter().map(|(k, v)| (map_key(k), v)).collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let mut map = s.serialize_map(Some(sorted.len()))?;
                for (key, value) in sorted {
                    map.serialize_entry(
                        &key,
                        &One {
                            value,
                            kind: &value_kind,
                        },
                    )?;
                }
                map.end()
            }
            value => One { value, kind: &kind }.serialize(s),
        }
    }
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// One value as the JSON text Debezium's JSON converter gives for it; an
/// error when it does not fit its kind.
struct One<'a> {
    value: &'a Value,
    kind: &'a Kind,
}

impl Serialize for One<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::I32(n) => s.serialize_i32(*n),
            Value::I64(n) => s.serialize_i64(*n),
            Value::U32(n) => s.serialize_u32(*n),
            Value::U64(n) => s.serialize_u64(*n),
            Value::F32(f) => serialize_float(f64::from(*f), s),
            Value::F64(f) => serialize_float(*f, s),
            Value::String(text) => s.serialize_str(text),
            Value::Bytes(b) => s.serialize_str(&base64(b)),
            Value::EnumNumber(n) => match self.kind {
                Kind::Enum(e) => match e.get_value(*n) {
                    Some(v) => s.serialize_str(v.name()),
                    None => s.serialize_i32(*n),
                },
                _ => Err(mismatch()),
            },
            Value::Message(m) => MessageJson(m).serialize(s),
            Value::List(_) | Value::Map(_) => Err(mismatch()),
        }
    }
}

/// A message: one of the converter's logical types by its value, else an
/// object of its fields.
struct MessageJson<'a>(&'a DynamicMessage);

impl Serialize for MessageJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let message = self.0;
        let descriptor = message.descriptor();
        let field = |name: &str| message.get_field_by_name(name).ok_or_else(mismatch);
        let int = |name: &str| -> Result<i64, S::Error> {
            match field(name)?.as_ref() {
                Value::I32(n) => Ok(i64::from(*n)),
                Value::I64(n) => Ok(*n),
                Value::U32(n) => Ok(i64::from(*n)),
                _ => Err(mismatch()),
            }
        };
        match descriptor.full_name() {
            "google.protobuf.Timestamp" => {
                let (seconds, nanos) = (int("seconds")?, int("nanos")?);
                let millis = seconds
                    .checked_mul(1000)
                    .and_then(|ms| ms.checked_add(nanos / 1_000_000))
                    .ok_or_else(mismatch)?;
                s.serialize_i64(millis)
            }
            "google.type.Date" => {
                s.serialize_i64(days_from_civil(int("year")?, int("month")?, int("day")?))
            }
            name if name == "confluent.type.Decimal" || name.ends_with("VariableScaleDecimal") => {
                let bytes = field("value")?;
                let Value::Bytes(bytes) = bytes.as_ref() else {
                    return Err(mismatch());
                };
                let scale = usize::try_from(int("scale")?).map_err(|_| mismatch())?;
                decimal_text(&BigInt::from_signed_bytes_be(bytes), scale)
                    .ok_or_else(mismatch)?
                    .serialize(s)
            }
            "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue" => {
                let inner = descriptor.get_field_by_name("value").ok_or_else(mismatch)?;
                FieldJson {
                    value: &message.get_field(&inner),
                    field: &inner,
                }
                .serialize(s)
            }
            _ => {
                let mut map = s.serialize_map(Some(descriptor.fields().len()))?;
                for field in descriptor.fields() {
                    map.serialize_entry(
                        field.name(),
                        &Column {
                            message,
                            field: &field,
                        },
                    )?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::formats::DecodedCdc;
    use crate::formats::testing::{changes, mysql_update, proto_record, proto_schema};

    /// The payload after the schema id of a framed record.
    fn payload(framed: &[u8]) -> &[u8] {
        crate::formats::framed(framed).expect("framed").datum
    }

    fn assert_same_as_json(schema: &ProtoSchema, proto_json: &str, json: &str) {
        let bytes = proto_record(schema, &[0], proto_json);
        let envelope = decode_envelope(schema, payload(&bytes)).expect("decodes");
        assert_eq!(
            envelope.view().unwrap(),
            DecodedCdc::Changes(changes(json)),
            "{json}"
        );
    }

    #[test]
    fn a_mysql_envelope_decodes_as_its_json_form() {
        let schema = proto_schema(2, "debezium-mysql-users.proto");
        // The message's JSON form is the JSON converter's text.
        let json = mysql_update().1;
        assert_same_as_json(&schema, json, json);
    }

    const PG_SOURCE: &str = r#"{"version":"2.5.0.Final","connector":"postgresql","name":"changefeed","ts_ms":1709287200123,"snapshot":"false","db":"kv","sequence":"[\"24023119\",\"24023128\"]","ts_us":1709287200123456,"ts_ns":1709287200123456000,"schema":"public","table":"kvs","txId":555,"lsn":24023128,"xmin":null}"#;

    #[test]
    fn logical_types_are_written_as_the_json_converter_writes_them() {
        let schema = proto_schema(3, "debezium-postgres-logical.proto");
        let common = r#""born":{"year":2023,"month":11,"day":14},"seen_ms":1700000000123,"seen_us":1700000000123456,"seen_ns":1700000000123456789,"seen_tz":"2023-11-14T22:13:20.123456Z","at_ms":"2023-11-14T22:13:20.123Z""#;
        // -5 and 1250 with scale 2, 42 with scale 0, as big-endian bytes.
        let before =
            format!(r#"{{"id":1,"price":{{"value":"+w==","precision":10,"scale":2}},{common}}}"#);
        let after = format!(
            r#"{{"id":1,"price":{{"value":"BOI=","precision":10,"scale":2}},"ratio":{{"scale":0,"value":"Kg=="}},{common},"blob":"AQID","tags":["x","y"],"counts":{{"b":2,"a":1}},"mood":"HAPPY","score":1.5,"active":true}}"#
        );
        let proto_json = format!(
            r#"{{"before":{before},"after":{after},"source":{PG_SOURCE},"op":"u","ts_ms":null}}"#
        );
        let common = r#""born":19675,"seen_ms":1700000000123,"seen_us":1700000000123456,"seen_ns":1700000000123456789,"seen_tz":"2023-11-14T22:13:20.123456Z","at_ms":1700000000123"#;
        let json = format!(
            r#"{{"before":{{"id":1,"price":-0.05,"ratio":null,{common},"blob":null,"tags":[],"counts":{{}},"mood":"CALM","score":null,"active":false}},"after":{{"id":1,"price":12.50,"ratio":42,{common},"blob":"AQID","tags":["x","y"],"counts":{{"a":1,"b":2}},"mood":"HAPPY","score":1.5,"active":true}},"source":{PG_SOURCE},"op":"u","ts_ms":null}}"#
        );
        assert_same_as_json(&schema, &proto_json, &json);
    }

    #[test]
    fn keys_decode_to_their_columns() {
        let schema = proto_schema(4, "debezium-mysql-users-key.proto");
        let bytes = proto_record(&schema, &[0], r#"{"id":42}"#);
        let key = decode_key(&schema, payload(&bytes)).unwrap().unwrap();
        let row = key.row();
        assert_eq!(row.len(), 1);
        assert_eq!((row[0].0.as_ref(), row[0].1.get()), ("id", "42"));
    }

    #[test]
    fn message_indexes_name_the_message() {
        assert_eq!(message_indexes(&[0, 9]).unwrap(), (vec![], &[9][..]));
        // Two indexes (zigzag 4), 1 and 0 (zigzag 2, 0).
        assert_eq!(
            message_indexes(&[4, 2, 0, 9]).unwrap(),
            (vec![1, 0], &[9][..])
        );
        for bad in [&[1][..], &[2], &[4, 3, 0], &[0x80], &[], &[200, 1]] {
            let err = message_indexes(bad).unwrap_err();
            assert_eq!(err.reason, Reason::InvalidProtobuf, "{bad:?}: {err}");
        }
        // The nested Value of the MySQL schema is no envelope; a message
        // the schema does not have is invalid.
        let schema = proto_schema(2, "debezium-mysql-users.proto");
        let bytes = proto_record(&schema, &[0, 0], r#"{"id":1}"#);
        let err = decode_envelope(&schema, payload(&bytes)).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownFormat, "{err}");
        assert!(
            err.message.contains("mysql.demo.users.Envelope.Value"),
            "{err}"
        );
        let err = decode_envelope(&schema, &[2, 6]).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidProtobuf, "{err}");
    }

    #[test]
    fn records_without_a_change_are_skipped_or_unknown() {
        let heartbeat = ProtoSchema::compile(
            5,
            "syntax = \"proto3\";\nmessage Heartbeat { int64 ts_ms = 1; }\n",
            &[],
        )
        .unwrap();
        let bytes = proto_record(&heartbeat, &[0], r#"{"ts_ms":1}"#);
        assert!(matches!(
            decode_envelope(&heartbeat, payload(&bytes)).unwrap(),
            BinaryEnvelope::Heartbeat(1)
        ));
        let schema = proto_schema(2, "debezium-mysql-users.proto");
        let json = mysql_update().1.replace(r#""op":"u""#, r#""op":"x""#);
        let bytes = proto_record(&schema, &[0], &json);
        let err = decode_envelope(&schema, payload(&bytes)).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownOp, "{err}");
    }

    #[test]
    fn bytes_that_do_not_decode_are_invalid_protobuf() {
        let schema = proto_schema(2, "debezium-mysql-users.proto");
        let bytes = proto_record(&schema, &[0], mysql_update().1);
        let payload = payload(&bytes);
        // Cut inside the last field (ts_ms, a wrapper message).
        let err = decode_envelope(&schema, &payload[..payload.len() - 1]).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidProtobuf, "{err}");
        let err = decode_envelope(&schema, &[0, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidProtobuf, "{err}");
    }

    /// Any bytes after a valid header decode or fail with a reason, never
    /// panic; what fails for the bytes themselves is `invalid_protobuf`.
    fn decode_any(schema: &ProtoSchema, payload: &[u8]) {
        match decode_envelope(schema, payload) {
            Ok(envelope) => {
                let _ = envelope.view();
            }
            Err(e) => assert!(
                matches!(
                    e.reason,
                    Reason::InvalidProtobuf
                        | Reason::UnknownOp
                        | Reason::WrongType
                        | Reason::MissingField
                ),
                "{e}"
            ),
        }
        let _ = decode_key(schema, payload);
    }

    static SCHEMAS: std::sync::LazyLock<[ProtoSchema; 2]> = std::sync::LazyLock::new(|| {
        [
            proto_schema(2, "debezium-mysql-users.proto"),
            proto_schema(3, "debezium-postgres-logical.proto"),
        ]
    });

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_after_a_header_never_panic(datum in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut payload = vec![0];
            payload.extend(&datum);
            for schema in SCHEMAS.iter() {
                decode_any(schema, &payload);
                decode_any(schema, &datum);
            }
        }

        #[test]
        fn mutated_records_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let schema = &SCHEMAS[0];
            let bytes = proto_record(schema, &[0], mysql_update().1);
            let mut payload = payload(&bytes).to_vec();
            for (at, byte) in edits {
                let at = at.index(payload.len());
                payload[at] = byte;
            }
            decode_any(schema, &payload);
        }
    }
}
