//! Encoders for generated records: the inverse of `formats`, writing what
//! Debezium, Maxwell, Canal and services put on their topics.

use serde_json::{Value, json};

use crate::model::{Millis, Op};

/// The CDC formats `vigil gen` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdcFormat {
    /// Debezium envelope (PostgreSQL connector) without schema.
    Debezium,
    /// Debezium envelope inside the JSON converter's schema/payload wrapper.
    DebeziumSchema,
    /// Debezium flattened by ExtractNewRecordState.
    DebeziumFlat,
    Maxwell,
    Canal,
    /// Debezium envelope written by Confluent's Avro converter (binary, in
    /// Confluent's framing; see [`super::avro`]).
    DebeziumAvro,
    /// Debezium envelope written by Confluent's Protobuf converter (binary,
    /// in Confluent's framing; see [`super::protobuf`]).
    DebeziumProtobuf,
}

impl CdcFormat {
    /// Every JSON format, in the order of the enum.
    pub const ALL: [CdcFormat; 5] = [
        CdcFormat::Debezium,
        CdcFormat::DebeziumSchema,
        CdcFormat::DebeziumFlat,
        CdcFormat::Maxwell,
        CdcFormat::Canal,
    ];

    /// Whether the format carries PostgreSQL schemas (`public.t0`) or MySQL
    /// databases (`app.t0`).
    pub fn table_name(self, table: u32) -> String {
        match self {
            CdcFormat::Debezium
            | CdcFormat::DebeziumSchema
            | CdcFormat::DebeziumFlat
            | CdcFormat::DebeziumAvro
            | CdcFormat::DebeziumProtobuf => format!("public.t{table}"),
            CdcFormat::Maxwell | CdcFormat::Canal => format!("app.t{table}"),
        }
    }

    /// Commit times with second precision only (Maxwell's `ts`).
    pub fn whole_seconds(self) -> bool {
        self == CdcFormat::Maxwell
    }

    /// Whether the format has snapshot reads.
    pub fn has_snapshots(self) -> bool {
        self != CdcFormat::Canal
    }

    /// How the generator writes transactions in the format, if it can:
    /// Debezium's JSON forms with their metadata, Maxwell in its rows.
    pub fn tx_form(self) -> Option<TxForm> {
        match self {
            CdcFormat::Debezium | CdcFormat::DebeziumSchema => Some(TxForm::Debezium),
            CdcFormat::Maxwell => Some(TxForm::Maxwell),
            _ => None,
        }
    }

    /// Whether the format has Debezium's tombstones and heartbeats.
    pub fn is_debezium(self) -> bool {
        matches!(
            self,
            CdcFormat::Debezium
                | CdcFormat::DebeziumSchema
                | CdcFormat::DebeziumFlat
                | CdcFormat::DebeziumAvro
                | CdcFormat::DebeziumProtobuf
        )
    }

    /// Canal writes every column value as a string.
    pub fn stringly(self) -> bool {
        self == CdcFormat::Canal
    }
}

/// How a transaction is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxForm {
    /// A `transaction` block on each change, and BEGIN and END records on
    /// the transaction topic (`provide.transaction.metadata`).
    Debezium,
    /// `xid` on each row, `xoffset` on every row but the last, `commit` on
    /// the last; no BEGIN nor END.
    Maxwell,
}

/// A generated row: the columns of the tables `vigil gen` maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRow {
    pub id: u64,
    pub version: u64,
    /// Distinguishes rows that share a version (conflicts, regressions).
    pub note: &'static str,
}

impl GenRow {
    /// The columns of a generated table, in order, and whether each holds
    /// a number (else a string).
    pub const COLUMNS: [(&'static str, bool); 7] = [
        ("id", true),
        ("version", true),
        ("name", false),
        ("email", false),
        ("balance_cents", true),
        ("status", false),
        ("note", false),
    ];

    /// The values of [`GenRow::COLUMNS`].
    pub(super) fn columns(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("id", json!(self.id)),
            ("version", json!(self.version)),
            ("name", json!(format!("customer {}", self.id))),
            ("email", json!(format!("customer{}@example.com", self.id))),
            (
                "balance_cents",
                json!((self.id * 7919 + self.version * 104_729) % 10_000_000),
            ),
            (
                "status",
                json!(if self.version.is_multiple_of(3) {
                    "active"
                } else {
                    "pending"
                }),
            ),
            ("note", json!(self.note)),
        ]
    }

    /// The row as a JSON object (values as strings for Canal).
    pub fn to_json(&self, stringly: bool) -> Value {
        let map = self
            .columns()
            .into_iter()
            .map(|(k, v)| {
                let v = match (&v, stringly) {
                    (Value::String(_), _) | (_, false) => v,
                    (other, true) => Value::String(other.to_string()),
                };
                (k.to_string(), v)
            })
            .collect();
        Value::Object(map)
    }
}

/// A change to encode.
#[derive(Debug, Clone)]
pub struct GenChange {
    pub table: u32,
    pub op: Op,
    pub before: Option<GenRow>,
    pub after: Option<GenRow>,
    pub commit_ts_ms: Millis,
    /// A position that grows with every change (LSN, binlog position).
    pub position: u64,
    pub tx_id: u64,
    /// The change's place in its transaction (`--transactions`); without
    /// it a Maxwell row is a transaction of its own (`xid` `tx_id`,
    /// `commit`).
    pub tx: Option<GenTx>,
}

/// A change's place in its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenTx {
    /// As Debezium's `transaction` block gives it.
    Debezium {
        id: String,
        total_order: u64,
        data_collection_order: u64,
    },
    /// As a Maxwell row gives it: the transaction's `xid`, and the row's
    /// `xoffset` (from 0) unless it is the commit row.
    Maxwell { xid: u64, xoffset: Option<u64> },
}

impl GenChange {
    fn pk(&self) -> u64 {
        self.after
            .as_ref()
            .or(self.before.as_ref())
            .map_or(0, |r| r.id)
    }
}

fn debezium_op(op: Op) -> &'static str {
    op.code()
}

/// The Kafka key and the value of a change in `format`; for
/// [`CdcFormat::DebeziumAvro`] and [`CdcFormat::DebeziumProtobuf`], the
/// same event as Debezium's JSON converter writes it (the binary forms are
/// [`super::avro::AvroTable::encode`]'s and
/// [`super::protobuf::ProtoTable::encode`]'s).
pub fn encode_change(format: CdcFormat, c: &GenChange) -> (Option<String>, String) {
    let stringly = format.stringly();
    let row = |r: &Option<GenRow>| r.as_ref().map_or(Value::Null, |r| r.to_json(stringly));
    let table = format!("t{}", c.table);
    match format {
        CdcFormat::Debezium
        | CdcFormat::DebeziumSchema
        | CdcFormat::DebeziumAvro
        | CdcFormat::DebeziumProtobuf => {
            let payload = json!({
                "before": row(&c.before),
                "after": row(&c.after),
                "source": {
                    "version": "2.7.0.Final",
                    "connector": "postgresql",
                    "name": "gen",
                    "ts_ms": c.commit_ts_ms,
                    "snapshot": if c.op == Op::Read { "true" } else { "false" },
                    "db": "app",
                    "sequence": format!("[\"{}\",\"{}\"]", c.position.saturating_sub(1), c.position),
                    "schema": "public",
                    "table": table,
                    "txId": c.tx_id,
                    "lsn": c.position,
                    "xmin": null
                },
                "op": debezium_op(c.op),
                "ts_ms": c.commit_ts_ms + 3,
                "transaction": match &c.tx {
                    Some(GenTx::Debezium { id, total_order, data_collection_order }) => json!({
                        "id": id,
                        "total_order": total_order,
                        "data_collection_order": data_collection_order
                    }),
                    _ => Value::Null,
                }
            });
            let key = json!({ "id": c.pk() }).to_string();
            let value = if format == CdcFormat::DebeziumSchema {
                format!(
                    "{{\"schema\":{},\"payload\":{payload}}}",
                    envelope_schema(&table)
                )
            } else {
                payload.to_string()
            };
            (Some(key), value)
        }
        CdcFormat::DebeziumFlat => {
            let image = if c.op == Op::Delete {
                &c.before
            } else {
                &c.after
            };
            let mut obj = match row(image) {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            obj.insert("__op".into(), json!(debezium_op(c.op)));
            obj.insert("__table".into(), json!(table));
            obj.insert("__db".into(), json!("app"));
            obj.insert("__lsn".into(), json!(c.position));
            obj.insert("__source_ts_ms".into(), json!(c.commit_ts_ms));
            obj.insert(
                "__deleted".into(),
                json!(if c.op == Op::Delete { "true" } else { "false" }),
            );
            (
                Some(json!({ "id": c.pk() }).to_string()),
                Value::Object(obj).to_string(),
            )
        }
        CdcFormat::Maxwell => {
            let (kind, data) = match c.op {
                Op::Create => ("insert", row(&c.after)),
                Op::Update => ("update", row(&c.after)),
                Op::Delete => ("delete", row(&c.before)),
                Op::Read => ("bootstrap-insert", row(&c.after)),
                Op::Truncate => ("truncate", Value::Null),
            };
            let mut v = json!({
                "database": "app",
                "table": table,
                "type": kind,
                "ts": c.commit_ts_ms / 1000,
                "position": format!("mysql-bin.000001:{}", c.position),
                "server_id": 1,
                "primary_key_columns": ["id"],
                "data": data
            });
            let (xid, xoffset) = match c.tx {
                Some(GenTx::Maxwell { xid, xoffset }) => (xid, xoffset),
                _ => (c.tx_id, None),
            };
            v["xid"] = json!(xid);
            // Maxwell writes `xoffset` on every row of a transaction but
            // the last, and `commit` on the last only.
            match xoffset {
                Some(xoffset) => v["xoffset"] = json!(xoffset),
                None => v["commit"] = json!(true),
            }
            if c.op == Op::Update {
                v["old"] = changed_columns(c.before.as_ref(), c.after.as_ref(), false);
            }
            let key = json!({ "database": "app", "table": table, "pk.id": c.pk() }).to_string();
            (Some(key), v.to_string())
        }
        CdcFormat::Canal => {
            let (kind, data) = match c.op {
                Op::Create | Op::Read => ("INSERT", row(&c.after)),
                Op::Update => ("UPDATE", row(&c.after)),
                Op::Delete => ("DELETE", row(&c.before)),
                Op::Truncate => ("TRUNCATE", Value::Null),
            };
            let old = if c.op == Op::Update {
                json!([changed_columns(c.before.as_ref(), c.after.as_ref(), true)])
            } else {
                Value::Null
            };
            let v = json!({
                "data": [data],
                "database": "app",
                "es": c.commit_ts_ms,
                "id": c.tx_id,
                "isDdl": false,
                "mysqlType": { "id": "bigint", "version": "bigint", "name": "varchar(255)", "email": "varchar(255)",
                               "balance_cents": "bigint", "status": "varchar(16)", "note": "varchar(64)" },
                "old": old,
                "pkNames": ["id"],
                "sql": "",
                "sqlType": { "id": -5, "version": -5, "name": 12, "email": 12, "balance_cents": -5, "status": 12, "note": 12 },
                "table": table,
                "ts": c.commit_ts_ms + 5,
                "type": kind
            });
            (None, v.to_string())
        }
    }
}

/// The columns of `before` that differ in `after` (Maxwell's and Canal's `old`).
fn changed_columns(before: Option<&GenRow>, after: Option<&GenRow>, stringly: bool) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return json!({});
    };
    let (b, a) = (b.to_json(stringly), a.to_json(stringly));
    let changed = b
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| a.get(k.as_str()) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(changed)
}

/// The Kafka Connect JSON schema of a Debezium envelope for a generated table.
fn envelope_schema(table: &str) -> String {
    let row_fields = json!([
        { "type": "int64", "optional": false, "field": "id" },
        { "type": "int64", "optional": false, "field": "version" },
        { "type": "string", "optional": true, "field": "name" },
        { "type": "string", "optional": true, "field": "email" },
        { "type": "int64", "optional": true, "field": "balance_cents" },
        { "type": "string", "optional": true, "field": "status" },
        { "type": "string", "optional": true, "field": "note" }
    ]);
    let value_name = format!("gen.public.{table}.Value");
    json!({
        "type": "struct",
        "fields": [
            { "type": "struct", "fields": row_fields, "optional": true, "name": value_name, "field": "before" },
            { "type": "struct", "fields": row_fields, "optional": true, "name": value_name, "field": "after" },
            { "type": "struct", "fields": [
                { "type": "string", "optional": false, "field": "version" },
                { "type": "string", "optional": false, "field": "connector" },
                { "type": "string", "optional": false, "field": "name" },
                { "type": "int64", "optional": false, "field": "ts_ms" },
                { "type": "string", "optional": true, "field": "snapshot" },
                { "type": "string", "optional": false, "field": "db" },
                { "type": "string", "optional": true, "field": "sequence" },
                { "type": "string", "optional": false, "field": "schema" },
                { "type": "string", "optional": false, "field": "table" },
                { "type": "int64", "optional": true, "field": "txId" },
                { "type": "int64", "optional": true, "field": "lsn" },
                { "type": "int64", "optional": true, "field": "xmin" }
              ], "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source" },
            { "type": "string", "optional": false, "field": "op" },
            { "type": "int64", "optional": true, "field": "ts_ms" }
        ],
        "optional": false,
        "name": format!("gen.public.{table}.Envelope")
    })
    .to_string()
}

/// How a cache event writes its timestamp (services differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsForm {
    Millis,
    FractionalSeconds,
    Rfc3339,
}

/// A cache event to encode.
#[derive(Debug, Clone)]
pub struct GenCacheEvent {
    pub operation: &'static str,
    pub keys: Vec<String>,
    pub service: String,
    pub version: Option<u64>,
    pub entity: Option<(u32, u64)>,
    pub ts_ms: Millis,
    pub ts_form: TsForm,
}

/// The Kafka key and the value of a cache event.
pub fn encode_cache(e: &GenCacheEvent) -> (Option<String>, String) {
    let ts = match e.ts_form {
        TsForm::Millis => json!(e.ts_ms),
        TsForm::FractionalSeconds => {
            let text = format!(
                "{}.{:03}",
                e.ts_ms.div_euclid(1000),
                e.ts_ms.rem_euclid(1000)
            );
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
        }
        TsForm::Rfc3339 => json!(crate::events::rfc3339_ms(e.ts_ms)),
    };
    let mut v = json!({ "operation": e.operation, "source_service": e.service, "timestamp": ts });
    if e.keys.len() == 1 {
        v["cache_key"] = json!(e.keys[0]);
    } else {
        v["cache_keys"] = json!(e.keys);
    }
    if let Some(version) = e.version {
        v["version"] = json!(version);
    }
    if let Some((table, id)) = e.entity {
        v["entity_type"] = json!(format!("t{table}"));
        v["entity_id"] = json!(id.to_string());
    }
    (e.keys.first().cloned(), v.to_string())
}
