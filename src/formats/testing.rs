//! Helpers for the decoders' unit tests: data files and assertions on
//! decoded records.

use apache_avro::types::Value;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{DecodedCdc, Flattened, RawChange, RawChanges, Row, Skip, decode_cdc};
use crate::dead_letter::Reason;

/// The text of a file under `tests/data`. The crate's directory is read when
/// the test runs (cargo and nextest set it), so a test binary built from
/// another checkout sharing the target directory still finds its data.
pub(crate) fn data_file(path: &str) -> String {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo or nextest");
    let full = format!("{root}/tests/data/{path}");
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// One line of `tests/data/samples/*.ndjson`.
#[derive(Deserialize)]
pub(crate) struct Sample<'a> {
    pub(crate) what: String,
    #[serde(borrow)]
    pub(crate) key: &'a RawValue,
    #[serde(borrow)]
    pub(crate) value: &'a RawValue,
}

pub(crate) fn samples(text: &str) -> Vec<Sample<'_>> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a sample line"))
        .collect()
}

/// The changes of a CDC value that must decode to changes (on a table
/// declared flattened).
pub(crate) fn changes(value: &str) -> RawChanges<'_> {
    match decode_cdc(Some(value), Flattened::Everywhere) {
        Ok(DecodedCdc::Changes(changes)) => changes,
        other => panic!("{value}: expected changes, got {other:?}"),
    }
}

/// The one change of a CDC value.
pub(crate) fn change(value: &str) -> RawChange<'_> {
    let mut changes = changes(value);
    assert_eq!(changes.len(), 1, "{value}");
    changes.remove(0)
}

/// Why a CDC value that must be skipped is.
pub(crate) fn skipped(value: &str) -> Skip {
    match decode_cdc(Some(value), Flattened::Everywhere) {
        Ok(DecodedCdc::Skipped(skip)) => skip,
        other => panic!("{value}: expected a skip, got {other:?}"),
    }
}

/// The reason a CDC value fails, checking that the message names `mention`.
pub(crate) fn failure(value: &str, mention: &str) -> Reason {
    match decode_cdc(Some(value), Flattened::Everywhere) {
        Err(e) => {
            assert!(e.message.contains(mention), "{value}: {e}");
            e.reason
        }
        Ok(decoded) => panic!("{value}: expected an error, got {decoded:?}"),
    }
}

/// A row image as (name, raw JSON text) pairs.
pub(crate) fn cols<'r>(row: &'r Option<Row>) -> Vec<(&'r str, &'r str)> {
    row.iter()
        .flatten()
        .map(|(name, value)| (name.as_ref(), value.get()))
        .collect()
}

/// A Debezium writer schema of `tests/data/avro`, parsed as the registry
/// client parses what it fetches.
pub(crate) fn avro_schema(id: u32, file: &str) -> crate::registry::WriterSchema {
    crate::registry::WriterSchema::parse(id, &data_file(&format!("avro/{file}")), &[])
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A value written by the Avro writer with its schema, in Confluent's
/// framing (byte 0, the schema id, the datum).
pub(crate) fn avro_record(
    schema: &crate::registry::WriterSchema,
    value: apache_avro::types::Value,
) -> Vec<u8> {
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(schema.schema())
        .build()
        .and_then(|writer| writer.write_value_to_vec(value))
        .expect("the value fits its schema");
    let mut framed = vec![0];
    framed.extend(schema.id.to_be_bytes());
    framed.extend(datum);
    framed
}

/// A Debezium Protobuf schema of `tests/data/protobuf` (with the files it
/// imports from there), compiled as the registry client compiles what it
/// fetches.
pub(crate) fn proto_schema(id: u32, file: &str) -> crate::registry::ProtoSchema {
    let text = data_file(&format!("protobuf/{file}"));
    let references: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.strip_prefix("import \"")?.strip_suffix("\";"))
        .filter(|name| !name.contains('/'))
        .map(|name| (name.to_string(), data_file(&format!("protobuf/{name}"))))
        .collect();
    crate::registry::ProtoSchema::compile(id, &text, &references)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A message of a schema given in its JSON form, encoded by `prost` in
/// Confluent's framing: byte 0, the schema id, the message indexes (a
/// single 0 for the first message), the message.
pub(crate) fn proto_record(
    schema: &crate::registry::ProtoSchema,
    indexes: &[usize],
    json: &str,
) -> Vec<u8> {
    use prost::Message as _;
    let descriptor = schema.message(indexes).expect("a message of the schema");
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = prost_reflect::DynamicMessage::deserialize(descriptor, &mut deserializer)
        .unwrap_or_else(|e| panic!("{json}: {e}"));
    let mut framed = vec![0];
    framed.extend(schema.id.to_be_bytes());
    if indexes.is_empty() || indexes == [0] {
        framed.push(0);
    } else {
        let zigzag = |n: i64| ((n << 1) ^ (n >> 63)) as u64;
        prost::encoding::encode_varint(zigzag(indexes.len() as i64), &mut framed);
        for index in indexes {
            prost::encoding::encode_varint(zigzag(*index as i64), &mut framed);
        }
    }
    framed.extend(message.encode_to_vec());
    framed
}

/// An Avro union's branch.
pub(crate) fn union(index: u32, value: Value) -> Value {
    Value::Union(index, Box::new(value))
}

/// The null branch of an optional Avro field.
pub(crate) fn null() -> Value {
    union(0, Value::Null)
}

/// An Avro string.
pub(crate) fn string(s: &str) -> Value {
    Value::String(s.into())
}

/// An Avro record of named fields.
pub(crate) fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(n, v)| (n.into(), v)).collect())
}

/// A MySQL update with both images, Avro and JSON.
pub(crate) fn mysql_update() -> (Value, &'static str) {
    let row = |email: &str, description: Value| {
        record(vec![
            ("id", Value::Int(1)),
            ("name", string("Ann")),
            ("email", string(email)),
            ("description", description),
            ("city2", union(1, string("Oslo"))),
        ])
    };
    let value = record(vec![
        ("before", union(1, row("ann@example.com", null()))),
        (
            "after",
            union(1, row("ann@new.example", union(1, string("hi")))),
        ),
        (
            "source",
            record(vec![
                ("version", string("1.9.7.Final")),
                ("connector", string("mysql")),
                ("name", string("mysql")),
                ("ts_ms", Value::Long(1_700_000_000_000)),
                ("snapshot", union(0, string("false"))),
                ("db", string("demo")),
                ("table", union(1, string("users"))),
                ("server_id", Value::Long(223_344)),
                (
                    "gtid",
                    union(1, string("3e11fa47-71ca-11e1-9e33-c80aa9429562:23")),
                ),
                ("file", string("mysql-bin.000003")),
                ("pos", Value::Long(154)),
                ("row", Value::Int(0)),
                ("thread", union(1, Value::Long(7))),
                ("query", null()),
            ]),
        ),
        ("op", string("u")),
        ("ts_ms", union(1, Value::Long(1_700_000_000_100))),
    ]);
    let json = r#"{"before":{"id":1,"name":"Ann","email":"ann@example.com","description":null,"city2":"Oslo"},"after":{"id":1,"name":"Ann","email":"ann@new.example","description":"hi","city2":"Oslo"},"source":{"version":"1.9.7.Final","connector":"mysql","name":"mysql","ts_ms":1700000000000,"snapshot":"false","db":"demo","table":"users","server_id":223344,"gtid":"3e11fa47-71ca-11e1-9e33-c80aa9429562:23","file":"mysql-bin.000003","pos":154,"row":0,"thread":7,"query":null},"op":"u","ts_ms":1700000000100}"#;
    (value, json)
}
