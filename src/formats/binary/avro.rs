//! Debezium change events written by Confluent's Avro converter: a magic
//! byte 0, the writer schema's id (4 bytes, big-endian) and the Avro binary
//! encoding of the envelope.
//!
//! The envelope is decoded with its writer schema into Avro values, read
//! through [`Fields`] by the envelope reader the binary formats share, and
//! each column written as JSON text (see [`super`]): numbers for
//! `int`/`long` and the time types built on them, `io.debezium.time.*`,
//! `date`, `timestamp-millis`/`-micros`; strings for strings, enums and
//! `ZonedTimestamp`; base64 for bytes; objects for records and maps; a
//! `decimal` (bytes and a scale) or an `io.debezium.data.VariableScaleDecimal`
//! (a record of a scale and bytes) as the decimal number itself.

use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value;
use num_bigint::BigInt;
use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use super::{
    BinaryEnvelope, BinaryKey, Fields, OwnedRow, decimal_text, read_envelope, serialize_float,
    wrong_type,
};
use crate::dead_letter::{Reason, RecordError, base64};
use crate::registry::WriterSchema;

/// Full name of Debezium's decimal of any scale.
const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";

fn invalid(message: impl Into<String>) -> RecordError {
    RecordError::new(Reason::InvalidAvro, message)
}

/// Bounds what the Avro decoder may reserve on the word of a length prefix
/// in the bytes it reads, for records of at most `max_record_bytes`
/// (`inputs.max_record_bytes`), and returns the bound in force. apache-avro
/// holds one bound for the process, set once: the first call sets it (later
/// calls, and its default of 512 MiB, change nothing after that).
///
/// A string or bytes field of a record is no longer than the record, and an
/// array or map of it holds at most one item per byte, each reserved as a
/// map entry at most: so no valid record is refused, while a hostile prefix
/// (a string "of 300 MB" in a record of 20 bytes) is a dead letter
/// (`invalid_avro`) before anything is reserved.
pub fn bound_allocations(max_record_bytes: u64) -> usize {
    let record = usize::try_from(max_record_bytes).unwrap_or(usize::MAX);
    let bound = record
        .saturating_mul(std::mem::size_of::<(String, Value)>())
        .min(apache_avro::util::DEFAULT_MAX_ALLOCATION_BYTES)
        .max(record);
    apache_avro::util::max_allocation_bytes(bound)
}

/// The bytes of a datum, as the Avro reader reads them, noting whether it
/// asked for more than there are: the reader takes the end of the bytes
/// where a union's branch index belongs as that of a null (branch 0), so a
/// truncated record could otherwise pass for one whose last fields are
/// null.
struct Datum<'a> {
    rest: &'a [u8],
    overrun: bool,
}

impl std::io::Read for Datum<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.overrun = true;
        }
        self.rest.read(buf)
    }
}

/// Reads one Avro datum with its writer schema's reader, built once with
/// the schema; bytes left over, or too few, are an error too.
fn read(schema: &WriterSchema, datum: &[u8]) -> Result<Value, RecordError> {
    let mut bytes = Datum {
        rest: datum,
        overrun: false,
    };
    let value = schema.reader().read_value(&mut bytes).map_err(|e| {
        invalid(format!(
            "the bytes do not decode with their writer schema {}: {e}",
            schema.id
        ))
    })?;
    if bytes.overrun {
        return Err(invalid(format!(
            "the bytes end before the record of writer schema {} does",
            schema.id
        )));
    }
    if !bytes.rest.is_empty() {
        return Err(invalid(format!(
            "{} bytes left after the record of writer schema {}",
            bytes.rest.len(),
            schema.id
        )));
    }
    Ok(value)
}

/// The fields of a record value and their schemas.
fn record<'v, 's>(
    value: &'v Value,
    schema: &'s Schema,
    names: &'s WriterSchema,
) -> Option<(&'v [(String, Value)], &'s RecordSchema)> {
    match (value, resolve(schema, names)) {
        (Value::Record(fields), Some(Schema::Record(record))) => Some((fields, record)),
        (Value::Union(index, inner), Some(Schema::Union(union))) => {
            record(inner, union.variants().get(*index as usize)?, names)
        }
        _ => None,
    }
}

/// A schema with a reference replaced by the type it names.
fn resolve<'s>(schema: &'s Schema, names: &'s WriterSchema) -> Option<&'s Schema> {
    match schema {
        Schema::Ref { name } => names.named(name),
        other => Some(other),
    }
}

/// Decodes a CDC value in Confluent's framing with its writer schema.
pub fn decode_envelope(schema: &WriterSchema, datum: &[u8]) -> Result<BinaryEnvelope, RecordError> {
    let value = read(schema, datum)?;
    let Some((fields, record_schema)) = record(&value, schema.schema(), schema) else {
        return Err(RecordError::new(
            Reason::UnknownFormat,
            format!(
                "writer schema {} is not a record: not a Debezium change event",
                schema.id
            ),
        ));
    };
    let top = Top {
        fields,
        schema: record_schema,
        names: schema,
    };
    read_envelope(&top, || {
        format!(
            "an Avro record of schema {} ({})",
            schema.id,
            record_schema.name.fullname(None)
        )
    })
}

/// Decodes a Kafka key in Confluent's framing: a record's fields as a row.
/// A key of another shape gives `None`, as a JSON key does.
pub fn decode_key(schema: &WriterSchema, datum: &[u8]) -> Result<Option<BinaryKey>, RecordError> {
    let value = read(schema, datum)?;
    match record(&value, schema.schema(), schema) {
        Some((fields, record_schema)) if !fields.is_empty() => {
            render_row(fields, record_schema, schema, "key").map(|row| Some(BinaryKey(row)))
        }
        _ => Ok(None),
    }
}

/// The top-level record of a value.
struct Top<'v, 's> {
    fields: &'v [(String, Value)],
    schema: &'s RecordSchema,
    names: &'s WriterSchema,
}

impl<'v, 's> Top<'v, 's> {
    /// A field's value and schema; `None` when absent or null.
    fn get(&self, name: &str) -> Option<(&'v Value, &'s Schema)> {
        let index = self.fields.iter().position(|(n, _)| n == name)?;
        let schema = &self.schema.fields.get(index)?.schema;
        non_null(&self.fields[index].1, schema, self.names)
    }
}

impl Fields for Top<'_, '_> {
    fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(n, _)| n == name)
    }

    fn field_count(&self) -> usize {
        self.fields.len()
    }

    fn names(&self) -> Vec<String> {
        self.fields.iter().map(|(n, _)| n.clone()).collect()
    }

    fn string(&self, name: &'static str) -> Result<Option<&str>, RecordError> {
        match self.get(name) {
            None => Ok(None),
            Some((Value::String(s), _)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(name, "a string")),
        }
    }

    fn count(&self, name: &'static str) -> Result<Option<u64>, RecordError> {
        match self.get(name) {
            None => Ok(None),
            Some((Value::Long(n), _)) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| wrong_type(name, "a count")),
            Some(_) => Err(wrong_type(name, "a long")),
        }
    }

    fn record(&self, name: &'static str) -> Result<Option<Self>, RecordError> {
        let Some((value, schema)) = self.get(name) else {
            return Ok(None);
        };
        let (fields, schema) =
            record(value, schema, self.names).ok_or_else(|| wrong_type(name, "a record"))?;
        Ok(Some(Top {
            fields,
            schema,
            names: self.names,
        }))
    }

    fn text(&self, name: &'static str) -> Result<Option<Box<RawValue>>, RecordError> {
        self.get(name)
            .map(|(value, schema)| render_value(value, schema, self.names, name))
            .transpose()
    }

    fn row(&self) -> Result<OwnedRow, RecordError> {
        render_row(self.fields, self.schema, self.names, "a row")
    }
}

/// A value without its null branch: `None` for null.
fn non_null<'v, 's>(
    value: &'v Value,
    schema: &'s Schema,
    names: &'s WriterSchema,
) -> Option<(&'v Value, &'s Schema)> {
    let schema = resolve(schema, names)?;
    match (value, schema) {
        (Value::Null, _) => None,
        (Value::Union(index, inner), Schema::Union(union)) => {
            non_null(inner, union.variants().get(*index as usize)?, names)
        }
        _ => Some((value, schema)),
    }
}

/// A record's fields as columns of JSON text.
fn render_row(
    fields: &[(String, Value)],
    schema: &RecordSchema,
    names: &WriterSchema,
    what: &str,
) -> Result<OwnedRow, RecordError> {
    fields
        .iter()
        .zip(&schema.fields)
        .map(|((name, value), field)| {
            render_value(value, &field.schema, names, what).map(|text| (name.clone(), text))
        })
        .collect()
}

/// One value as the JSON text Debezium's JSON converter gives for it,
/// written straight into its text (nothing parsed again).
fn render_value(
    value: &Value,
    schema: &Schema,
    names: &WriterSchema,
    what: &str,
) -> Result<Box<RawValue>, RecordError> {
    serde_json::value::to_raw_value(&Json {
        value,
        schema,
        names,
    })
    .map_err(|e| invalid(format!("a value of {what} has no JSON form: {e}")))
}

/// A value with its schema, serialised as the JSON text Debezium's JSON
/// converter gives for it; an error when the value does not fit its
/// schema.
struct Json<'a> {
    value: &'a Value,
    schema: &'a Schema,
    names: &'a WriterSchema,
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mismatch = || S::Error::custom("it does not match its schema");
        let schema = resolve(self.schema, self.names).ok_or_else(mismatch)?;
        let json = |value, schema| Json {
            value,
            schema,
            names: self.names,
        };
        match (self.value, schema) {
            (Value::Union(index, inner), Schema::Union(union)) => {
                let variant = union.variants().get(*index as usize).ok_or_else(mismatch)?;
                json(inner, variant).serialize(s)
            }
            (Value::Null, _) => s.serialize_unit(),
            (Value::Boolean(b), _) => s.serialize_bool(*b),
            (Value::Int(n) | Value::Date(n) | Value::TimeMillis(n), _) => s.serialize_i32(*n),
            (
                Value::Long(n)
                | Value::TimeMicros(n)
                | Value::TimestampMillis(n)
                | Value::TimestampMicros(n)
                | Value::TimestampNanos(n)
                | Value::LocalTimestampMillis(n)
                | Value::LocalTimestampMicros(n)
                | Value::LocalTimestampNanos(n),
                _,
            ) => s.serialize_i64(*n),
            (Value::Float(f), _) => serialize_float(f64::from(*f), s),
            (Value::Double(f), _) => serialize_float(*f, s),
            (Value::String(text) | Value::Enum(_, text), _) => s.serialize_str(text),
            (Value::Uuid(u), _) => s.collect_str(u),
            (Value::Bytes(b) | Value::Fixed(_, b), _) => s.serialize_str(&base64(b)),
            (Value::Decimal(d), Schema::Decimal(decimal)) => {
                decimal_text(&BigInt::from(d.clone()), decimal.scale)
                    .ok_or_else(mismatch)?
                    .serialize(s)
            }
            (Value::BigDecimal(d), _) => RawValue::from_string(d.to_string())
                .map_err(S::Error::custom)?
                .serialize(s),
            (Value::Record(fields), Schema::Record(record))
                if record.name.fullname(None) == VARIABLE_SCALE_DECIMAL =>
            {
                let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                let (Some(Value::Int(scale)), Some(Value::Bytes(bytes))) =
                    (field("scale"), field("value"))
                else {
                    return Err(mismatch());
                };
                let scale = usize::try_from(*scale).map_err(|_| mismatch())?;
                decimal_text(&BigInt::from_signed_bytes_be(bytes), scale)
                    .ok_or_else(mismatch)?
                    .serialize(s)
            }
            (Value::Record(fields), Schema::Record(record)) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for ((name, value), field) in fields.iter().zip(&record.fields) {
                    map.serialize_entry(name, &json(value, &field.schema))?;
                }
                map.end()
            }
            (Value::Array(items), Schema::Array(array)) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&json(item, &array.items))?;
                }
                seq.end()
            }
            (Value::Map(entries), Schema::Map(map_schema)) => {
                // In key order, so that equal maps give equal text.
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_unstable_by_key(|(k, _)| k.as_str());
                let mut map = s.serialize_map(Some(sorted.len()))?;
                for (key, value) in sorted {
                    map.serialize_entry(key, &json(value, &map_schema.types))?;
                }
                map.end()
            }
            (Value::Duration(d), _) => {
                let mut map = s.serialize_map(Some(3))?;
                map.serialize_entry("months", &u32::from(d.months()))?;
                map.serialize_entry("days", &u32::from(d.days()))?;
                map.serialize_entry("millis", &u32::from(d.millis()))?;
                map.end()
            }
            _ => Err(mismatch()),
        }
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::Decimal;
    use proptest::prelude::*;

    use super::*;
    use crate::formats::testing::{
        avro_record, avro_schema, changes, mysql_update, null, record, string, union,
    };
    use crate::formats::{DecodedCdc, Flattened, decode_cdc, framed};

    /// A PostgreSQL update as the kvs schema writes it, and the same event
    /// as Debezium's JSON converter writes it (schemaless).
    fn postgres_update() -> (Value, &'static str) {
        let row = record(vec![
            ("tenant", string("t1")),
            ("store", string("s1")),
            ("partition_key", string("pk-1")),
            ("sort_key", string("a")),
            ("version", string("7")),
            ("updated_at", string("2024-03-01T10:00:00.123456Z")),
            (
                "tags",
                union(1, Value::Array(vec![union(1, string("x")), null()])),
            ),
            ("data", union(1, string("hello \"world\""))),
            ("encoding", null()),
            ("schema", union(1, Value::Long(3))),
            ("lookup_keys", null()),
        ]);
        let value = record(vec![
            ("before", null()),
            ("after", union(1, row)),
            (
                "source",
                record(vec![
                    ("version", string("2.5.0.Final")),
                    ("connector", string("postgresql")),
                    ("name", string("changefeed")),
                    ("ts_ms", Value::Long(1_709_287_200_123)),
                    ("snapshot", union(0, string("false"))),
                    ("db", string("kv")),
                    ("sequence", union(1, string("[\"24023119\",\"24023128\"]"))),
                    ("ts_us", union(1, Value::Long(1_709_287_200_123_456))),
                    ("ts_ns", union(1, Value::Long(1_709_287_200_123_456_000))),
                    ("schema", string("public")),
                    ("table", string("kvs")),
                    ("txId", union(1, Value::Long(555))),
                    ("lsn", union(1, Value::Long(24_023_128))),
                    ("xmin", null()),
                ]),
            ),
            (
                "transaction",
                union(
                    1,
                    record(vec![
                        ("id", string("555:24023128")),
                        ("total_order", Value::Long(2)),
                        ("data_collection_order", Value::Long(1)),
                    ]),
                ),
            ),
            ("op", string("u")),
            ("ts_ms", union(1, Value::Long(1_709_287_200_200))),
            ("ts_us", null()),
            ("ts_ns", null()),
        ]);
        let json = r#"{"before":null,"after":{"tenant":"t1","store":"s1","partition_key":"pk-1","sort_key":"a","version":"7","updated_at":"2024-03-01T10:00:00.123456Z","tags":["x",null],"data":"hello \"world\"","encoding":null,"schema":3,"lookup_keys":null},"source":{"version":"2.5.0.Final","connector":"postgresql","name":"changefeed","ts_ms":1709287200123,"snapshot":"false","db":"kv","sequence":"[\"24023119\",\"24023128\"]","ts_us":1709287200123456,"ts_ns":1709287200123456000,"schema":"public","table":"kvs","txId":555,"lsn":24023128,"xmin":null},"transaction":{"id":"555:24023128","total_order":2,"data_collection_order":1},"op":"u","ts_ms":1709287200200,"ts_us":null,"ts_ns":null}"#;
        (value, json)
    }

    fn decoded(schema: &WriterSchema, value: Value) -> BinaryEnvelope {
        let bytes = avro_record(schema, value);
        let framed = framed(&bytes).expect("framed");
        assert_eq!(framed.schema_id, schema.id);
        decode_envelope(schema, framed.datum).expect("decodes")
    }

    fn assert_same_as_json(schema: &WriterSchema, value: Value, json: &str) {
        let envelope = decoded(schema, value);
        assert_eq!(
            envelope.view().unwrap(),
            DecodedCdc::Changes(changes(json)),
            "{json}"
        );
    }

    #[test]
    fn a_hostile_length_prefix_is_a_dead_letter_before_anything_is_reserved() {
        let bound = bound_allocations(1 << 20);
        assert!(
            (1 << 20..=128 << 20).contains(&bound),
            "a bound of {bound} bytes for records of 1 MiB"
        );
        let schema = avro_schema(2, "debezium-mysql-users.avsc");
        // `before` is the row (union branch 1, zigzag 2), its id 1 (2), then
        // the name: a string of 300 MB, says its length prefix (zigzag,
        // seven bits a byte), in a record of a dozen bytes.
        let mut datum = vec![2, 2];
        let mut prefix = 2 * 300_000_000u64;
        while prefix >= 0x80 {
            datum.push((prefix as u8 & 0x7f) | 0x80);
            prefix >>= 7;
        }
        datum.push(prefix as u8);
        datum.extend_from_slice(b"Ann");
        let e = decode_envelope(&schema, &datum).expect_err("hostile bytes");
        assert_eq!(e.reason, Reason::InvalidAvro, "{e}");
        assert!(
            e.to_string().contains(&format!(
                "Unable to allocate 300000000 bytes (maximum allowed: {bound})"
            )),
            "refused for its size, not read and found short: {e}"
        );
        // A record within the bound still decodes.
        let (value, json) = mysql_update();
        assert_same_as_json(&schema, value, json);
    }

    #[test]
    fn postgres_and_mysql_envelopes_decode_as_their_json_form() {
        let (value, json) = postgres_update();
        assert_same_as_json(&avro_schema(1, "debezium-postgres-kvs.avsc"), value, json);
        let (value, json) = mysql_update();
        assert_same_as_json(&avro_schema(2, "debezium-mysql-users.avsc"), value, json);
    }

    #[test]
    fn logical_types_are_written_as_the_json_converter_writes_them() {
        let schema = avro_schema(3, "debezium-postgres-logical.avsc");
        let source = match postgres_update().0 {
            Value::Record(fields) => fields.into_iter().find(|(n, _)| n == "source").unwrap().1,
            _ => unreachable!(),
        };
        let row = |price: i64, ratio: Value| {
            record(vec![
                ("id", Value::Int(1)),
                (
                    "price",
                    Value::Decimal(Decimal::from(BigInt::from(price).to_signed_bytes_be())),
                ),
                ("ratio", ratio),
                ("born", Value::Int(19_675)),
                ("seen_ms", Value::Long(1_700_000_000_123)),
                ("seen_us", Value::Long(1_700_000_000_123_456)),
                ("seen_ns", Value::Long(1_700_000_000_123_456_789)),
                ("seen_tz", string("2023-11-14T22:13:20.123456Z")),
                ("at_ms", Value::TimestampMillis(1_700_000_000_123)),
                ("at_us", Value::TimestampMicros(1_700_000_000_123_456)),
                ("blob", union(1, Value::Bytes(vec![1, 2, 3]))),
            ])
        };
        let ratio = |scale: i32, unscaled: i64| {
            union(
                1,
                record(vec![
                    ("scale", Value::Int(scale)),
                    (
                        "value",
                        Value::Bytes(BigInt::from(unscaled).to_signed_bytes_be()),
                    ),
                ]),
            )
        };
        let value = record(vec![
            ("before", union(1, row(-5, ratio(3, -5)))),
            ("after", union(1, row(1250, ratio(0, 42)))),
            ("source", source),
            ("op", string("u")),
            ("ts_ms", null()),
        ]);
        let json_row = |price: &str, ratio: &str| {
            format!(
                r#"{{"id":1,"price":{price},"ratio":{ratio},"born":19675,"seen_ms":1700000000123,"seen_us":1700000000123456,"seen_ns":1700000000123456789,"seen_tz":"2023-11-14T22:13:20.123456Z","at_ms":1700000000123,"at_us":1700000000123456,"blob":"AQID"}}"#
            )
        };
        let json = format!(
            r#"{{"before":{},"after":{},"source":{{"version":"2.5.0.Final","connector":"postgresql","name":"changefeed","ts_ms":1709287200123,"snapshot":"false","db":"kv","sequence":"[\"24023119\",\"24023128\"]","ts_us":1709287200123456,"ts_ns":1709287200123456000,"schema":"public","table":"kvs","txId":555,"lsn":24023128,"xmin":null}},"op":"u","ts_ms":null}}"#,
            json_row("-0.05", "-0.005"),
            json_row("12.50", "42")
        );
        assert_same_as_json(&schema, value, &json);
    }

    #[test]
    fn keys_decode_to_their_columns() {
        let schema = avro_schema(4, "debezium-mysql-users-key.avsc");
        let bytes = avro_record(&schema, record(vec![("id", Value::Int(42))]));
        let key = decode_key(&schema, framed(&bytes).unwrap().datum)
            .unwrap()
            .unwrap();
        let row = key.row();
        assert_eq!(row.len(), 1);
        assert_eq!((row[0].0.as_ref(), row[0].1.get()), ("id", "42"));
    }

    #[test]
    fn transaction_begin_and_end_decode_as_their_json_does() {
        let schema = avro_schema(7, "debezium-transaction-metadata.avsc");
        let collection = |name: &str, count: i64| {
            union(
                1,
                record(vec![
                    ("data_collection", string(name)),
                    ("event_count", Value::Long(count)),
                ]),
            )
        };
        let begin = record(vec![
            ("status", string("BEGIN")),
            ("id", string("571:53195829")),
            ("event_count", null()),
            ("data_collections", null()),
            ("ts_ms", Value::Long(1_486_500_577_125)),
        ]);
        let end = record(vec![
            ("status", string("END")),
            ("id", string("571:53195829")),
            ("event_count", union(1, Value::Long(2))),
            (
                "data_collections",
                union(
                    1,
                    Value::Array(vec![collection("s1.a", 1), collection("s2.a", 1)]),
                ),
            ),
            ("ts_ms", Value::Long(1_486_500_577_691)),
        ]);
        for (value, json) in [
            (
                begin,
                r#"{"status":"BEGIN","id":"571:53195829","event_count":null,"data_collections":null,"ts_ms":1486500577125}"#,
            ),
            (
                end,
                r#"{"status":"END","id":"571:53195829","event_count":2,"data_collections":[{"data_collection":"s1.a","event_count":1},{"data_collection":"s2.a","event_count":1}],"ts_ms":1486500577691}"#,
            ),
        ] {
            let envelope = decoded(&schema, value);
            let from_json = decode_cdc(Some(json), Flattened::Nowhere).unwrap();
            assert!(matches!(from_json, DecodedCdc::Transaction(_)), "{json}");
            assert_eq!(envelope.view().unwrap(), from_json, "{json}");
        }
        let other = record(vec![
            ("status", string("ROLLBACK")),
            ("id", string("1")),
            ("event_count", null()),
            ("data_collections", null()),
            ("ts_ms", Value::Long(1)),
        ]);
        let err = decoded(&schema, other).view().unwrap_err();
        assert_eq!(err.reason, Reason::UnknownFormat, "{err}");
    }

    #[test]
    fn records_without_a_change_are_skipped_or_unknown() {
        let heartbeat = WriterSchema::parse(
            5,
            r#"{"type":"record","name":"Heartbeat","namespace":"io.debezium.connector.common","fields":[{"name":"ts_ms","type":"long"}]}"#,
            &[],
        )
        .unwrap();
        assert!(matches!(
            decoded(&heartbeat, record(vec![("ts_ms", Value::Long(1))])),
            BinaryEnvelope::Heartbeat(1)
        ));
        let other = WriterSchema::parse(
            6,
            r#"{"type":"record","name":"Thing","fields":[{"name":"a","type":"int"}]}"#,
            &[],
        )
        .unwrap();
        let bytes = avro_record(&other, record(vec![("a", Value::Int(1))]));
        let err = decode_envelope(&other, framed(&bytes).unwrap().datum).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownFormat, "{err}");
        let (mut value, _) = mysql_update();
        if let Value::Record(fields) = &mut value {
            fields.iter_mut().find(|(n, _)| n == "op").unwrap().1 = string("x");
        }
        let schema = avro_schema(2, "debezium-mysql-users.avsc");
        let bytes = avro_record(&schema, value);
        let err = decode_envelope(&schema, framed(&bytes).unwrap().datum).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownOp, "{err}");
    }

    #[test]
    fn truncated_and_padded_records_are_invalid_avro() {
        let schema = avro_schema(2, "debezium-mysql-users.avsc");
        let bytes = avro_record(&schema, mysql_update().0);
        let datum = framed(&bytes).unwrap().datum;
        for end in 0..datum.len() {
            let err = decode_envelope(&schema, &datum[..end]).unwrap_err();
            assert_eq!(err.reason, Reason::InvalidAvro, "cut at {end}: {err}");
        }
        let mut padded = datum.to_vec();
        padded.push(0);
        let err = decode_envelope(&schema, &padded).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidAvro, "{err}");
    }

    /// Any bytes after a valid header decode or fail with a reason, never
    /// panic; what fails for the bytes themselves is `invalid_avro`.
    fn decode_any(schema: &WriterSchema, datum: &[u8]) {
        match decode_envelope(schema, datum) {
            Ok(envelope) => {
                let _ = envelope.view();
            }
            Err(e) => assert!(
                matches!(
                    e.reason,
                    Reason::InvalidAvro | Reason::UnknownOp | Reason::WrongType
                ),
                "{e}"
            ),
        }
        let _ = decode_key(schema, datum);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_after_a_header_never_panic(datum in prop::collection::vec(any::<u8>(), 0..300)) {
            decode_any(&avro_schema(1, "debezium-postgres-kvs.avsc"), &datum);
            decode_any(&avro_schema(3, "debezium-postgres-logical.avsc"), &datum);
        }

        #[test]
        fn mutated_records_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let schema = avro_schema(2, "debezium-mysql-users.avsc");
            let bytes = avro_record(&schema, mysql_update().0);
            let mut datum = framed(&bytes).unwrap().datum.to_vec();
            for (at, byte) in edits {
                let at = at.index(datum.len());
                datum[at] = byte;
            }
            decode_any(&schema, &datum);
        }
    }
}
