//! Generated changes as Debezium's PostgreSQL connector writes them with
//! Confluent's Protobuf converter (`optional.for.nullables=true`): the
//! envelope and the key as Protobuf messages, each in Confluent's framing
//! (byte 0, the schema id, the message indexes `[0]`, the message).
//!
//! The messages are built as `prost-reflect` dynamic messages of the
//! schemas compiled by `protox`, and encoded by `prost`. Subjects follow
//! the converter's default naming, `{topic}-value` and `{topic}-key`; their
//! ids are the registry's, set once registered.

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};

use super::GenSchema;
use super::avro::required;
use super::encode::{GenChange, GenRow};
use crate::model::Op;
use crate::registry::{ProtoSchema, SchemaKind};

/// The value and key schemas of one table written in Protobuf, and the
/// message types records are built from.
#[derive(Debug, Clone)]
pub struct ProtoTable {
    pub value: GenSchema,
    pub key: GenSchema,
    envelope: MessageDescriptor,
    key_message: MessageDescriptor,
}

/// The first message type of a generated schema.
fn first_message(text: &str) -> MessageDescriptor {
    ProtoSchema::compile(0, text, &[])
        .ok()
        .and_then(|schema| schema.message(&[]))
        .expect("the generated schemas are valid Protobuf")
}

impl ProtoTable {
    /// The schemas of table `t` on `topic`, framed with ids `first_id`
    /// (value) and `first_id + 1` (key) until told others.
    pub fn new(topic: &str, table: u32, first_id: u32) -> Self {
        let package = format!("gen.public.t{table}");
        let (value, key) = (envelope_schema(&package), key_schema(&package));
        ProtoTable {
            envelope: first_message(&value),
            key_message: first_message(&key),
            value: GenSchema::new(topic, "value", first_id, value, SchemaKind::Protobuf),
            key: GenSchema::new(topic, "key", first_id + 1, key, SchemaKind::Protobuf),
        }
    }

    /// The Kafka key and value of a change.
    pub fn encode(&self, c: &GenChange) -> (Vec<u8>, Vec<u8>) {
        let id = c.after.as_ref().or(c.before.as_ref()).map_or(0, |r| r.id);
        let mut key = DynamicMessage::new(self.key_message.clone());
        key.set_field_by_name("id", long(id));

        let mut envelope = DynamicMessage::new(self.envelope.clone());
        let row_type = self
            .envelope
            .get_field_by_name("after")
            .and_then(|f| f.kind().as_message().cloned());
        let source_type = self
            .envelope
            .get_field_by_name("source")
            .and_then(|f| f.kind().as_message().cloned());
        let (Some(row_type), Some(source_type)) = (row_type, source_type) else {
            unreachable!("the generated envelope has rows and a source");
        };
        for (name, image) in [("before", &c.before), ("after", &c.after)] {
            if let Some(r) = image {
                envelope.set_field_by_name(name, Value::Message(row(&row_type, r)));
            }
        }
        let mut source = DynamicMessage::new(source_type);
        let strings = [
            ("version", "2.7.0.Final".to_string()),
            ("connector", "postgresql".to_string()),
            ("name", "gen".to_string()),
            (
                "snapshot",
                (if c.op == Op::Read { "true" } else { "false" }).to_string(),
            ),
            ("db", "app".to_string()),
            (
                "sequence",
                format!("[\"{}\",\"{}\"]", c.position.saturating_sub(1), c.position),
            ),
            ("schema", "public".to_string()),
            ("table", format!("t{}", c.table)),
        ];
        for (name, value) in strings {
            source.set_field_by_name(name, Value::String(value));
        }
        source.set_field_by_name("ts_ms", Value::I64(c.commit_ts_ms));
        source.set_field_by_name("txId", long(c.tx_id));
        source.set_field_by_name("lsn", long(c.position));
        envelope.set_field_by_name("source", Value::Message(source));
        envelope.set_field_by_name("op", Value::String(c.op.code().to_string()));
        envelope.set_field_by_name("ts_ms", Value::I64(c.commit_ts_ms + 3));
        (frame(&self.key, &key), frame(&self.value, &envelope))
    }
}

/// A message in Confluent's Protobuf framing with its schema's id.
fn frame(schema: &GenSchema, message: &DynamicMessage) -> Vec<u8> {
    let mut framed = crate::formats::confluent_opening(schema.id, 1 + message.encoded_len());
    // The message indexes: [0], written as a single 0.
    framed.push(0);
    message
        .encode(&mut framed)
        .expect("a vector has room for any message");
    framed
}

/// A generated number as an `int64` (they stay far below `i64::MAX`).
fn long(n: u64) -> Value {
    Value::I64(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A row image; a null column is left unset (its field is `optional`).
fn row(descriptor: &MessageDescriptor, r: &GenRow) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for (name, value) in r.columns() {
        let value = match value {
            serde_json::Value::Number(n) => long(n.as_u64().unwrap_or_default()),
            serde_json::Value::String(s) => Value::String(s),
            _ => continue,
        };
        message.set_field_by_name(name, value);
    }
    message
}

/// The envelope schema of a table in package `package` (`gen.public.t0`).
fn envelope_schema(package: &str) -> String {
    let columns: String = GenRow::COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (column, numeric))| {
            let ty = if *numeric { "int64" } else { "string" };
            let label = if required(column) { "" } else { "optional " };
            format!("    {label}{ty} {column} = {};\n", i + 1)
        })
        .collect();
    format!(
        r#"syntax = "proto3";
package {package};

message Envelope {{
  Value before = 1;
  Value after = 2;
  Source source = 3;
  string op = 4;
  optional int64 ts_ms = 5;
  block transaction = 6;

  message Value {{
{columns}  }}
  message Source {{
    string version = 1;
    string connector = 2;
    string name = 3;
    int64 ts_ms = 4;
    optional string snapshot = 5;
    string db = 6;
    optional string sequence = 7;
    string schema = 8;
    string table = 9;
    optional int64 txId = 10;
    optional int64 lsn = 11;
    optional int64 xmin = 12;
  }}
  message block {{
    string id = 1;
    int64 total_order = 2;
    int64 data_collection_order = 3;
  }}
}}
"#
    )
}

/// The key schema of a table in package `package`: its primary key.
fn key_schema(package: &str) -> String {
    format!("syntax = \"proto3\";\npackage {package};\n\nmessage Key {{\n  int64 id = 1;\n}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{self, Flattened, decode_protobuf_envelope, decode_protobuf_key, framed};
    use crate::workload::encode::{CdcFormat, encode_change};
    use crate::workload::testing::{change, sorted};

    #[test]
    fn a_protobuf_change_decodes_as_its_json_form() {
        let table = ProtoTable::new("gen.public.t1", 1, 3);
        let compile = |s: &GenSchema| ProtoSchema::compile(s.id, &s.text, &[]).unwrap();
        let (value_schema, key_schema) = (compile(&table.value), compile(&table.key));
        for c in [
            change(Op::Create, None, Some(1)),
            change(Op::Update, Some(1), Some(2)),
            change(Op::Delete, Some(2), None),
            change(Op::Read, None, Some(2)),
        ] {
            let (key, value) = table.encode(&c);
            let (json_key, json_value) = encode_change(CdcFormat::DebeziumProtobuf, &c);
            let value = framed(&value).unwrap();
            assert_eq!(value.schema_id, 3);
            let envelope = decode_protobuf_envelope(&value_schema, value.datum).unwrap();
            let json = formats::decode_cdc(Some(&json_value), Flattened::Nowhere).unwrap();
            assert_eq!(sorted(envelope.view().unwrap()), sorted(json), "{:?}", c.op);

            let key = framed(&key).unwrap();
            assert_eq!(key.schema_id, 4);
            let key = decode_protobuf_key(&key_schema, key.datum)
                .unwrap()
                .unwrap();
            let texts = |row: formats::Row<'_>| -> Vec<(String, String)> {
                row.iter()
                    .map(|(n, v)| (n.to_string(), v.get().to_string()))
                    .collect()
            };
            let json_key = json_key.unwrap();
            let json_row = formats::decode_key(&json_key).unwrap();
            assert_eq!(texts(key.row()), texts(json_row));
        }
    }
}
