//! Generated changes as Debezium's PostgreSQL connector writes them with
//! Confluent's Avro converter: the envelope and the key as Avro records, each
//! in Confluent's framing (byte 0, the schema id, the Avro datum).
//!
//! The schemas are those the converter derives for a generated table (rows
//! and the source block of optional fields as unions with null). Subjects
//! follow the converter's default naming, `{topic}-value` and `{topic}-key`;
//! their ids are the registry's, set once registered.

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::json;

use super::GenSchema;
use super::encode::{GenChange, GenRow};
use crate::model::Op;
use crate::registry::SchemaKind;

/// A value of an Avro schema in Confluent's framing with `id`.
fn frame(schema: &Schema, id: u32, value: Value) -> Vec<u8> {
    let datum = GenericDatumWriter::builder(schema)
        .build()
        .and_then(|writer| writer.write_value_to_vec(value))
        .expect("generated values fit their schemas");
    let mut framed = crate::formats::confluent_opening(id, datum.len());
    framed.extend(datum);
    framed
}

/// The value and key schemas of one table written in Avro.
#[derive(Debug, Clone)]
pub struct AvroTable {
    pub value: GenSchema,
    pub key: GenSchema,
    value_schema: Schema,
    key_schema: Schema,
}

impl AvroTable {
    /// The schemas of table `t` on `topic`, framed with ids `first_id`
    /// (value) and `first_id + 1` (key) until told others.
    pub fn new(topic: &str, table: u32, first_id: u32) -> Self {
        let name = format!("gen.public.t{table}");
        let (value, key) = (envelope_schema(&name), key_schema(&name));
        let parse =
            |text: &str| Schema::parse_str(text).expect("the generated schemas are valid Avro");
        AvroTable {
            value_schema: parse(&value),
            key_schema: parse(&key),
            value: GenSchema::new(topic, "value", first_id, value, SchemaKind::Avro),
            key: GenSchema::new(topic, "key", first_id + 1, key, SchemaKind::Avro),
        }
    }

    /// The Kafka key and value of a change.
    pub fn encode(&self, c: &GenChange) -> (Vec<u8>, Vec<u8>) {
        let id = c.after.as_ref().or(c.before.as_ref()).map_or(0, |r| r.id);
        let key = frame(
            &self.key_schema,
            self.key.id,
            Value::Record(vec![("id".into(), long(id))]),
        );
        let source = Value::Record(vec![
            ("version".into(), string("2.7.0.Final")),
            ("connector".into(), string("postgresql")),
            ("name".into(), string("gen")),
            ("ts_ms".into(), Value::Long(c.commit_ts_ms)),
            (
                "snapshot".into(),
                some(string(if c.op == Op::Read { "true" } else { "false" })),
            ),
            ("db".into(), string("app")),
            (
                "sequence".into(),
                some(Value::String(format!(
                    "[\"{}\",\"{}\"]",
                    c.position.saturating_sub(1),
                    c.position
                ))),
            ),
            ("schema".into(), string("public")),
            ("table".into(), Value::String(format!("t{}", c.table))),
            ("txId".into(), some(long(c.tx_id))),
            ("lsn".into(), some(long(c.position))),
            ("xmin".into(), none()),
        ]);
        let value = frame(
            &self.value_schema,
            self.value.id,
            Value::Record(vec![
                ("before".into(), row(c.before.as_ref())),
                ("after".into(), row(c.after.as_ref())),
                ("source".into(), source),
                ("op".into(), string(c.op.code())),
                ("ts_ms".into(), some(Value::Long(c.commit_ts_ms + 3))),
                ("transaction".into(), none()),
            ]),
        );
        (key, value)
    }
}

fn string(s: &str) -> Value {
    Value::String(s.into())
}

/// A generated number as an Avro long (they stay far below `i64::MAX`).
fn long(n: u64) -> Value {
    Value::Long(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The null branch of an optional field.
fn none() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

/// The value branch of an optional field.
fn some(value: Value) -> Value {
    Value::Union(1, Box::new(value))
}

/// Whether a column of [`GenRow::COLUMNS`] is required (the primary key
/// and the version), else optional (a union with null).
pub(super) fn required(column: &str) -> bool {
    matches!(column, "id" | "version")
}

/// A row image as the optional `before` / `after` field.
fn row(row: Option<&GenRow>) -> Value {
    let Some(r) = row else {
        return none();
    };
    let fields = r
        .columns()
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                serde_json::Value::Number(n) => long(n.as_u64().unwrap_or_default()),
                serde_json::Value::String(s) => Value::String(s),
                _ => Value::Null,
            };
            let value = match value {
                Value::Null => none(),
                value if required(name) => value,
                value => some(value),
            };
            (name.to_string(), value)
        })
        .collect();
    some(Value::Record(fields))
}

/// The envelope schema of table `name` (`gen.public.t0`).
fn envelope_schema(name: &str) -> String {
    let optional = |field: &str, ty: serde_json::Value| json!({ "name": field, "type": ["null", ty], "default": null });
    let row_fields: Vec<serde_json::Value> = GenRow::COLUMNS
        .iter()
        .map(|(column, numeric)| {
            let ty = if *numeric { "long" } else { "string" };
            if required(column) {
                json!({ "name": column, "type": ty })
            } else {
                optional(column, json!(ty))
            }
        })
        .collect();
    json!({
        "type": "record",
        "name": "Envelope",
        "namespace": name,
        "fields": [
            optional("before", json!({ "type": "record", "name": "Value", "fields": row_fields })),
            optional("after", json!("Value")),
            { "name": "source", "type": {
                "type": "record",
                "name": "Source",
                "namespace": "io.debezium.connector.postgresql",
                "fields": [
                    { "name": "version", "type": "string" },
                    { "name": "connector", "type": "string" },
                    { "name": "name", "type": "string" },
                    { "name": "ts_ms", "type": "long" },
                    optional("snapshot", json!("string")),
                    { "name": "db", "type": "string" },
                    optional("sequence", json!("string")),
                    { "name": "schema", "type": "string" },
                    { "name": "table", "type": "string" },
                    optional("txId", json!("long")),
                    optional("lsn", json!("long")),
                    optional("xmin", json!("long"))
                ]
            } },
            { "name": "op", "type": "string" },
            optional("ts_ms", json!("long")),
            optional("transaction", json!({
                "type": "record",
                "name": "block",
                "namespace": "event",
                "fields": [
                    { "name": "id", "type": "string" },
                    { "name": "total_order", "type": "long" },
                    { "name": "data_collection_order", "type": "long" }
                ]
            }))
        ],
        "connect.name": format!("{name}.Envelope")
    })
    .to_string()
}

/// The key schema of table `name`: its primary key.
fn key_schema(name: &str) -> String {
    json!({
        "type": "record",
        "name": "Key",
        "namespace": name,
        "fields": [{ "name": "id", "type": "long" }],
        "connect.name": format!("{name}.Key")
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{self, Flattened, decode_avro_envelope, decode_avro_key, framed};
    use crate::registry::WriterSchema;
    use crate::workload::RegisteredTable;
    use crate::workload::encode::{CdcFormat, encode_change};
    use crate::workload::testing::{change, sorted};

    fn writer_schema(schema: &GenSchema) -> WriterSchema {
        WriterSchema::parse(schema.id, &schema.text, &[]).unwrap()
    }

    #[test]
    fn the_schemas_have_the_columns_of_the_rows() {
        let row = GenRow {
            id: 1,
            version: 2,
            note: "",
        };
        let names: Vec<&str> = row.columns().iter().map(|(n, _)| *n).collect();
        let listed: Vec<&str> = GenRow::COLUMNS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, listed);
    }

    #[test]
    fn an_avro_change_decodes_as_its_json_form() {
        let table = AvroTable::new("gen.public.t1", 1, 3);
        let (value_schema, key_schema) = (writer_schema(&table.value), writer_schema(&table.key));
        for c in [
            change(Op::Create, None, Some(1)),
            change(Op::Update, Some(1), Some(2)),
            change(Op::Delete, Some(2), None),
            change(Op::Read, None, Some(2)),
        ] {
            let (key, value) = table.encode(&c);
            let (json_key, json_value) = encode_change(CdcFormat::DebeziumAvro, &c);
            let value = framed(&value).unwrap();
            assert_eq!(value.schema_id, 3);
            let envelope = decode_avro_envelope(&value_schema, value.datum).unwrap();
            let json = formats::decode_cdc(Some(&json_value), Flattened::Nowhere).unwrap();
            // The JSON encoder writes columns in name order, Avro in the
            // schema's.
            assert_eq!(sorted(envelope.view().unwrap()), sorted(json), "{:?}", c.op);

            let key = framed(&key).unwrap();
            assert_eq!(key.schema_id, 4);
            let key = decode_avro_key(&key_schema, key.datum).unwrap().unwrap();
            let json_key = json_key.unwrap();
            let texts = |row: formats::Row<'_>| -> Vec<(String, String)> {
                row.iter()
                    .map(|(n, v)| (n.to_string(), v.get().to_string()))
                    .collect()
            };
            let json_row = formats::decode_key(&json_key).unwrap();
            assert_eq!(texts(key.row()), texts(json_row));
        }
    }

    #[test]
    fn records_carry_the_ids_the_registry_gave() {
        let table = AvroTable::new("gen.public.t0", 0, 1);
        assert_eq!(
            (table.value.subject.as_str(), table.key.subject.as_str()),
            ("gen.public.t0-value", "gen.public.t0-key")
        );
        let mut table = RegisteredTable::Avro(Box::new(table));
        assert!(table.set_id("gen.public.t0-value", 100));
        assert!(table.set_id("gen.public.t0-key", 101));
        assert!(!table.set_id("gen.public.t1-value", 7));
        let (key, value) = table.encode(&change(Op::Create, None, Some(1)));
        assert_eq!(framed(&value).unwrap().schema_id, 100);
        assert_eq!(framed(&key).unwrap().schema_id, 101);
    }
}
