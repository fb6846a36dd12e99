//! Ingest: one raw input record (a Kafka message, or a line of a file) in,
//! pipeline [`Record`]s out — or the [`RecordError`] that makes it a dead
//! letter. Shared by every source, so files and topics are judged alike.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Framing, TopicSelector, UnmappedTables};
use crate::dead_letter::{Reason, RecordError};
use crate::detect::transaction::{EndCounts, TxBoundary, TxId, TxMark};
use crate::formats::{
    self, BinaryKey, DecodedCdc, Framed, RawChange, RawChanges, Row, Skip, TxMarker, TxStatus,
};
use crate::mapping::{Change, Mapped, Mapper};
use crate::model::{CacheEvent, Millis, Name, Provenance};
use crate::registry::{Registered, RegistryError, SchemaKind, SchemaRegistry, SetupError};
use crate::telemetry::{RecordSkipped, RegistryUnavailable, Stats, UnmappedChange};

/// The first wait for an unavailable schema registry; each next one is
/// twice as long, up to [`MAX_REGISTRY_WAIT`].
const FIRST_REGISTRY_WAIT: Duration = Duration::from_millis(100);
const MAX_REGISTRY_WAIT: Duration = Duration::from_secs(5);

/// Which kind of input a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// A database change stream.
    Cdc,
    /// Cache invalidations and fills published by services.
    Cache,
}

/// A record as a source read it.
#[derive(Debug, Clone, Copy)]
pub struct RawInput<'a> {
    pub stream: Stream,
    pub key: Option<&'a [u8]>,
    /// `None` is a tombstone.
    pub value: Option<Payload<'a>>,
    /// Kafka timestamp, the fallback event time.
    pub timestamp_ms: Option<Millis>,
}

/// A record's value: bytes as a Kafka message carries them, or text its
/// source has already found to be UTF-8 (a line of a file), which is not
/// checked a second time.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    Bytes(&'a [u8]),
    Text(&'a str),
}

impl<'a> Payload<'a> {
    pub fn bytes(self) -> &'a [u8] {
        match self {
            Payload::Bytes(bytes) => bytes,
            Payload::Text(text) => text.as_bytes(),
        }
    }

    fn text(self) -> Result<&'a str, RecordError> {
        match self {
            Payload::Bytes(bytes) => utf8(bytes, "message value"),
            Payload::Text(text) => Ok(text),
        }
    }
}

/// A decoded, mapped input record on its way through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Change(Change),
    Cache(CacheEvent, Provenance),
    /// A transaction's BEGIN or END (with `detect.transactions`).
    Transaction(TxBoundary),
    /// The time of a Debezium heartbeat: it moves its partition's event
    /// time and nothing else.
    Tick(Millis),
}

impl Record {
    /// The event time the watermark advances on.
    pub fn event_time(&self) -> Millis {
        match self {
            Record::Change(c) => c.commit_ts_ms,
            Record::Cache(e, _) => e.ts_ms,
            Record::Transaction(b) => b.ts,
            Record::Tick(ts) => *ts,
        }
    }
}

/// A Kafka key as decoded for its primary-key columns.
enum Key<'k> {
    Binary(BinaryKey),
    /// JSON text (not necessarily a key vigil reads).
    Json(&'k str),
}

impl Key<'_> {
    fn row(&self) -> Option<Row<'_>> {
        match self {
            Key::Binary(key) => Some(key.row()),
            Key::Json(text) => formats::decode_key(text),
        }
    }
}

/// Decodes and maps raw records. Cheap to share between source threads.
pub struct Ingest {
    mapper: Mapper,
    flattened_topics: Vec<TopicSelector>,
    unmapped: UnmappedTables,
    /// BEGIN and END records become [`Record::Transaction`]s (else they
    /// are counted and skipped).
    transactions: bool,
    /// Where the schemas of records in a registry's framing are found;
    /// `None` without `schema_registry.url`.
    registry: Option<SchemaRegistry>,
    framing: Framing,
    stats: Arc<Stats>,
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, RecordError> {
    std::str::from_utf8(bytes).map_err(|e| {
        RecordError::new(
            Reason::InvalidUtf8,
            format!(
                "the {what} is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

impl Ingest {
    /// Fails only when the schema registry's client cannot be set up (its
    /// CA file).
    pub fn new(config: &Config, stats: Arc<Stats>) -> Result<Self, SetupError> {
        formats::bound_avro_allocations(config.inputs.max_record_bytes.0);
        Ok(Ingest {
            mapper: Mapper::new(config),
            flattened_topics: config.inputs.flattened_topics.clone(),
            unmapped: config.inputs.unmapped_tables,
            transactions: config.detect.transactions,
            registry: SchemaRegistry::from_config(&config.schema_registry)?,
            framing: config.schema_registry.framing,
            stats,
        })
    }

    /// Decodes one record into `out`. Records that are recognised but carry
    /// nothing to check (tombstones, heartbeats, unmapped tables with
    /// `unmapped_tables = "count"`, ...) are counted and add nothing. On
    /// error `out` is left as it was: a record is taken whole or not at all.
    pub fn ingest(
        &self,
        input: RawInput<'_>,
        provenance: &Provenance,
        out: &mut Vec<Record>,
    ) -> Result<(), RecordError> {
        match input.stream {
            Stream::Cache => {
                let value = input.value.map(Payload::text).transpose()?;
                let Some(text) = value else {
                    self.stats.emit(RecordSkipped(formats::Skip::Tombstone));
                    return Ok(());
                };
                let event = formats::decode_cache(text, input.timestamp_ms)?;
                out.push(Record::Cache(event, provenance.clone()));
                Ok(())
            }
            Stream::Cdc => match input.value.and_then(|v| self.framed(v.bytes())) {
                Some(framed) => self.ingest_framed(input, framed?, provenance, out),
                None => self.ingest_cdc(input, provenance, out),
            },
        }
    }

    /// Bytes in the registry's framing (`schema_registry.framing`): `None`
    /// when they are not. An Apicurio global id past `u32::MAX` is an
    /// unknown schema (ids are kept as 32 bits, as Confluent's are).
    fn framed<'a>(&self, bytes: &'a [u8]) -> Option<Result<Framed<'a>, RecordError>> {
        match self.framing {
            Framing::Confluent => formats::framed(bytes).map(Ok),
            Framing::Apicurio => formats::framed_apicurio(bytes).map(|f| {
                u32::try_from(f.global_id)
                    .map(|schema_id| Framed {
                        schema_id,
                        datum: f.datum,
                    })
                    .map_err(|_| {
                        RecordError::new(
                            Reason::UnknownSchema,
                            format!(
                                "global id {} is past the largest id vigil reads ({})",
                                f.global_id,
                                u32::MAX
                            ),
                        )
                    })
            }),
        }
    }

    /// Whether a record comes from a topic of `inputs.flattened_topics`.
    fn on_flattened_topic(&self, provenance: &Provenance) -> bool {
        !provenance.from_file
            && self
                .flattened_topics
                .iter()
                .any(|t| t.matches(&provenance.topic))
    }

    fn ingest_cdc(
        &self,
        input: RawInput<'_>,
        provenance: &Provenance,
        out: &mut Vec<Record>,
    ) -> Result<(), RecordError> {
        let value = input.value.map(Payload::text).transpose()?;
        // Where a record without any format's marks is a flattened row:
        // anywhere on a flattened topic, else on tables declared so.
        let declared =
            |table: &formats::TableRef<'_>| self.mapper.reads_flattened(table, provenance);
        let flattened = if self.on_flattened_topic(provenance) {
            formats::Flattened::Everywhere
        } else {
            formats::Flattened::Tables(&declared)
        };
        let decoded = formats::decode_cdc(value, flattened)?;
        let key = self.key(input.key);
        let key_row = key.as_ref().and_then(Key::row);
        self.map_changes(decoded, key_row.as_ref(), input, provenance, out)
    }

    /// A CDC record in Confluent's framing: its schema from the registry
    /// (waiting while the registry cannot be reached), then an Avro record
    /// or a Protobuf message decoded with it and mapped as a JSON one, or
    /// the JSON text of a JSON Schema record read as an unframed record.
    fn ingest_framed(
        &self,
        input: RawInput<'_>,
        framed: Framed<'_>,
        provenance: &Provenance,
        out: &mut Vec<Record>,
    ) -> Result<(), RecordError> {
        let Some(registry) = &self.registry else {
            return Err(RecordError::new(
                Reason::UnknownFormat,
                format!(
                    "a record in Confluent's schema registry framing (schema id {}), but no schema registry is configured (schema_registry.url)",
                    framed.schema_id
                ),
            ));
        };
        let envelope = match &*self.registered(registry, framed.schema_id)? {
            Registered::Avro(schema) => formats::decode_avro_envelope(schema, framed.datum)?,
            Registered::Protobuf(schema) => {
                formats::decode_protobuf_envelope(schema, framed.datum)?
            }
            Registered::JsonSchema => {
                let unframed = RawInput {
                    value: Some(Payload::Bytes(framed.datum)),
                    ..input
                };
                return self.ingest_cdc(unframed, provenance, out);
            }
        };
        let key = self.key(input.key);
        let key_row = key.as_ref().and_then(Key::row);
        self.map_changes(envelope.view()?, key_row.as_ref(), input, provenance, out)
    }

    /// A Kafka key, for its primary-key columns: one in Confluent's framing
    /// decoded with its schema (Avro, Protobuf) or read as the JSON after the header
    /// (JSON Schema), any other as JSON text. A key that gives no columns
    /// leaves the primary key to the row.
    fn key<'k>(&self, key: Option<&'k [u8]>) -> Option<Key<'k>> {
        let key = key?;
        let (Some(Ok(framed)), Some(registry)) = (self.framed(key), &self.registry) else {
            return std::str::from_utf8(key).ok().map(Key::Json);
        };
        match &*self.registered(registry, framed.schema_id).ok()? {
            Registered::Avro(schema) => formats::decode_avro_key(schema, framed.datum)
                .ok()
                .flatten()
                .map(Key::Binary),
            Registered::Protobuf(schema) => formats::decode_protobuf_key(schema, framed.datum)
                .ok()
                .flatten()
                .map(Key::Binary),
            Registered::JsonSchema => std::str::from_utf8(framed.datum).ok().map(Key::Json),
        }
    }

    /// The schema of an id. While the registry cannot be reached the record
    /// waits (each wait logged and counted) and asks again: an outage makes
    /// no dead letters.
    fn registered(
        &self,
        registry: &SchemaRegistry,
        id: u32,
    ) -> Result<Arc<Registered>, RecordError> {
        let mut wait = FIRST_REGISTRY_WAIT;
        loop {
            match registry.schema(id) {
                Ok(schema) => return Ok(schema),
                Err(e) if e.is_retryable() => {
                    self.stats.emit(RegistryUnavailable {
                        schema_id: id,
                        error: &e,
                        wait,
                    });
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(MAX_REGISTRY_WAIT);
                }
                Err(e @ RegistryError::UnknownSchema { .. }) => {
                    return Err(RecordError::new(Reason::UnknownSchema, e.to_string()));
                }
                Err(e @ RegistryError::Unsupported { .. }) => {
                    return Err(RecordError::new(Reason::UnknownFormat, e.to_string()));
                }
                Err(e @ RegistryError::Malformed { kind, .. }) => {
                    let reason = match kind {
                        SchemaKind::Avro => Reason::InvalidAvro,
                        SchemaKind::Protobuf => Reason::InvalidProtobuf,
                    };
                    return Err(RecordError::new(reason, e.to_string()));
                }
                Err(e) => return Err(RecordError::new(Reason::InvalidAvro, e.to_string())),
            }
        }
    }

    /// A BEGIN or END record, its tables resolved against `[[tables]]`:
    /// the counts of unmapped tables are left out.
    fn boundary(
        &self,
        marker: TxMarker<'_>,
        kafka_ts_ms: Option<Millis>,
        provenance: &Provenance,
    ) -> Result<TxBoundary, RecordError> {
        let ts = marker.ts_ms.or(kafka_ts_ms).ok_or_else(|| {
            RecordError::new(
                Reason::MissingTimestamp,
                "the transaction record carries no ts_ms and no Kafka timestamp",
            )
        })?;
        let mark = match marker.status {
            TxStatus::Begin => TxMark::Begin,
            TxStatus::End => TxMark::End({
                let mut tables: Vec<(Name, u64)> = Vec::new();
                let mut all_mapped = true;
                for (name, count) in &marker.data_collections {
                    match self.mapper.collection_table(name) {
                        Some(table) => match tables.iter_mut().find(|(t, _)| *t == table) {
                            Some((_, n)) => *n += count,
                            None => tables.push((table, *count)),
                        },
                        None => all_mapped = false,
                    }
                }
                let listed: u64 = marker.data_collections.iter().map(|(_, n)| n).sum();
                EndCounts {
                    event_count: marker.event_count,
                    tables,
                    // Without a per-table list the tables are unknown.
                    all_mapped: all_mapped && marker.event_count.is_none_or(|n| n == listed),
                    rows_numbered: false,
                }
            }),
        };
        Ok(TxBoundary {
            tx: TxId::from(marker.id.as_ref()),
            ts,
            mark,
            evidence: provenance.clone(),
        })
    }

    /// With `detect.transactions`, a Maxwell row's place in its transaction
    /// (`xid`, `xoffset`, `commit`), whether its table is mapped or not: a
    /// transaction's rows are numbered over every table.
    fn maxwell_row(
        &self,
        raw: &RawChange<'_>,
        mapped: &Mapped,
        kafka_ts_ms: Option<Millis>,
        provenance: &Provenance,
    ) -> Option<TxBoundary> {
        if !self.transactions
            || raw.format != formats::CdcFormat::Maxwell
            || !raw.op.obliges_invalidation()
        {
            return None;
        }
        let tx = raw.pos.tx_id.as_deref()?;
        let (table, ts) = match mapped {
            Mapped::Change(c) => (c.table.clone(), c.commit_ts_ms),
            Mapped::Unmapped { table } => (
                Name::new(table.as_str()),
                raw.pos.commit_ts_ms.or(kafka_ts_ms)?,
            ),
        };
        Some(TxBoundary {
            tx: TxId::from(tx),
            ts,
            mark: TxMark::Row {
                table,
                xoffset: raw.pos.tx_order,
                commit: raw.pos.tx_last,
            },
            evidence: provenance.clone(),
        })
    }

    /// Maps decoded changes into `out`, all of them or none.
    fn map_changes(
        &self,
        decoded: DecodedCdc<'_>,
        key: Option<&Row<'_>>,
        input: RawInput<'_>,
        provenance: &Provenance,
        out: &mut Vec<Record>,
    ) -> Result<(), RecordError> {
        let changes: RawChanges<'_> = match decoded {
            DecodedCdc::Skipped(kind) => {
                self.stats.emit(RecordSkipped(kind));
                return Ok(());
            }
            DecodedCdc::Heartbeat(ts) => {
                self.stats.emit(RecordSkipped(Skip::Heartbeat));
                out.push(Record::Tick(ts));
                return Ok(());
            }
            DecodedCdc::Transaction(_) if !self.transactions => {
                self.stats.emit(RecordSkipped(Skip::TransactionMetadata));
                return Ok(());
            }
            DecodedCdc::Transaction(marker) => {
                let boundary = self.boundary(marker, input.timestamp_ms, provenance)?;
                out.push(Record::Transaction(boundary));
                return Ok(());
            }
            DecodedCdc::Changes(changes) => changes,
        };
        let start = out.len();
        for raw in &changes {
            let mapped = self.mapper.map(raw, key, provenance, input.timestamp_ms);
            let row = mapped
                .as_ref()
                .ok()
                .and_then(|m| self.maxwell_row(raw, m, input.timestamp_ms, provenance));
            if let Some(row) = &row {
                out.push(Record::Transaction(row.clone()));
            }
            match mapped {
                Ok(Mapped::Change(change)) => out.push(Record::Change(change)),
                Ok(Mapped::Unmapped { table }) => match self.unmapped {
                    UnmappedTables::Count => self.stats.emit(UnmappedChange(&table)),
                    UnmappedTables::Dlq => {
                        // The row is a dead letter, but it was seen: its
                        // place in its transaction still counts.
                        out.truncate(start);
                        out.extend(row.map(Record::Transaction));
                        return Err(RecordError::new(
                            Reason::UnmappedTable,
                            format!("table {table:?} is not in [[tables]]"),
                        ));
                    }
                },
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;
    use crate::formats::avro_mysql_update;
    use crate::formats::testing::{avro_record, avro_schema, proto_record, proto_schema};
    use crate::registry::fake::FakeRegistry;

    const VALUE_ID: u32 = 2;
    const KEY_ID: u32 = 4;

    fn config(registry: Option<&FakeRegistry>) -> Config {
        let mut text = String::from(
            "[[tables]]\ntable = \"demo.users\"\nkeys = [\"user:{id}\", \"mail:{email}\"]\nversion = \"binlog\"\n",
        );
        if let Some(registry) = registry {
            text.push_str(&format!(
                "[schema_registry]\nurl = \"{}\"\n",
                registry.url()
            ));
        }
        Config::parse_with_env("test", &text, Vec::new()).unwrap()
    }

    /// A registry serving the MySQL users value and key schemas.
    fn registry() -> FakeRegistry {
        let registry = FakeRegistry::start();
        for (id, file) in [
            (VALUE_ID, "debezium-mysql-users.avsc"),
            (KEY_ID, "debezium-mysql-users-key.avsc"),
        ] {
            registry.add_schema(id, &data_file(file));
        }
        registry
    }

    fn data_file(file: &str) -> String {
        crate::formats::testing::data_file(&format!("avro/{file}"))
    }

    /// The MySQL update and its key, in Avro framing.
    fn avro_update() -> (Vec<u8>, Vec<u8>) {
        let value = avro_record(
            &avro_schema(VALUE_ID, "debezium-mysql-users.avsc"),
            avro_mysql_update().0,
        );
        let key = avro_record(
            &avro_schema(KEY_ID, "debezium-mysql-users-key.avsc"),
            Value::Record(vec![("id".into(), Value::Int(1))]),
        );
        (value, key)
    }

    fn provenance() -> Provenance {
        Provenance {
            topic: crate::model::Name::new("mysql.demo.users"),
            partition: 0,
            offset: 7,
            from_file: false,
        }
    }

    fn ingest_one(ingest: &Ingest, key: &[u8], value: &[u8]) -> Result<Vec<Record>, RecordError> {
        let input = RawInput {
            stream: Stream::Cdc,
            key: Some(key),
            value: Some(Payload::Bytes(value)),
            timestamp_ms: Some(1),
        };
        let mut out = Vec::new();
        ingest.ingest(input, &provenance(), &mut out).map(|()| out)
    }

    fn json_records() -> Vec<Record> {
        let ingest = Ingest::new(&config(None), Arc::default()).unwrap();
        let records =
            ingest_one(&ingest, br#"{"id":1}"#, avro_mysql_update().1.as_bytes()).unwrap();
        assert_eq!(records.len(), 1);
        records
    }

    #[test]
    fn an_avro_record_maps_as_its_json_form() {
        let registry = registry();
        let ingest = Ingest::new(&config(Some(&registry)), Arc::default()).unwrap();
        let (value, key) = avro_update();
        assert_eq!(ingest_one(&ingest, &key, &value).unwrap(), json_records());
        // The key in JSON beside an Avro value is read as well.
        assert_eq!(
            ingest_one(&ingest, br#"{"id":1}"#, &value).unwrap(),
            json_records()
        );
    }

    /// Bytes in Confluent's framing: byte 0, the schema id, the datum.
    fn framed(id: u32, datum: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(id.to_be_bytes());
        bytes.extend(datum);
        bytes
    }

    #[test]
    fn a_json_schema_record_maps_as_its_unframed_form() {
        const JSON_VALUE_ID: u32 = 6;
        const JSON_KEY_ID: u32 = 7;
        let registry = registry();
        let served = serde_json::json!({
            "schema": r#"{"type":"object","title":"demo.users.Envelope"}"#,
            "schemaType": "JSON",
        })
        .to_string();
        registry.answer(&format!("/schemas/ids/{JSON_VALUE_ID}"), 200, &served);
        registry.answer(&format!("/schemas/ids/{JSON_KEY_ID}"), 200, &served);
        let ingest = Ingest::new(&config(Some(&registry)), Arc::default()).unwrap();
        let value = framed(JSON_VALUE_ID, avro_mysql_update().1.as_bytes());
        let key = framed(JSON_KEY_ID, br#"{"id":1}"#);
        assert_eq!(ingest_one(&ingest, &key, &value).unwrap(), json_records());
        // Keys in any of the forms beside a value in another.
        let (avro_value, avro_key) = avro_update();
        assert_eq!(
            ingest_one(&ingest, &key, &avro_value).unwrap(),
            json_records()
        );
        assert_eq!(
            ingest_one(&ingest, &avro_key, &value).unwrap(),
            json_records()
        );
        // The JSON after the header is judged as unframed JSON is.
        let err = ingest_one(&ingest, &key, &framed(JSON_VALUE_ID, b"{\"op\":")).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidJson, "{err}");
        let err =
            ingest_one(&ingest, &key, &framed(JSON_VALUE_ID, br#"{"foo":"bar"}"#)).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownFormat, "{err}");
        // A schema of a kind vigil does not read.
        registry.answer(
            "/schemas/ids/8",
            200,
            r#"{"schema":"struct T {}","schemaType":"THRIFT"}"#,
        );
        let err = ingest_one(&ingest, &key, &framed(8, &[0, 2, 4])).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownFormat, "{err}");
        assert!(err.message.contains("THRIFT"), "{err}");
    }

    const PROTO_VALUE_ID: u32 = 10;
    const PROTO_KEY_ID: u32 = 11;

    /// Serves the MySQL users Protobuf value and key schemas.
    fn serve_protobuf(registry: &FakeRegistry) {
        for (id, file) in [
            (PROTO_VALUE_ID, "debezium-mysql-users.proto"),
            (PROTO_KEY_ID, "debezium-mysql-users-key.proto"),
        ] {
            let served = serde_json::json!({
                "schema": crate::formats::testing::data_file(&format!("protobuf/{file}")),
                "schemaType": "PROTOBUF",
            });
            registry.answer(&format!("/schemas/ids/{id}"), 200, &served.to_string());
        }
    }

    /// The MySQL update and its key in Protobuf framing.
    fn protobuf_update() -> (Vec<u8>, Vec<u8>) {
        let value = proto_record(
            &proto_schema(PROTO_VALUE_ID, "debezium-mysql-users.proto"),
            &[0],
            avro_mysql_update().1,
        );
        let key = proto_record(
            &proto_schema(PROTO_KEY_ID, "debezium-mysql-users-key.proto"),
            &[0],
            r#"{"id":1}"#,
        );
        (value, key)
    }

    #[test]
    fn a_protobuf_record_maps_as_its_json_form() {
        let registry = registry();
        serve_protobuf(&registry);
        let ingest = Ingest::new(&config(Some(&registry)), Arc::default()).unwrap();
        let (value, key) = protobuf_update();
        assert_eq!(ingest_one(&ingest, &key, &value).unwrap(), json_records());
        // Keys of the other forms beside it, and beside an Avro value.
        assert_eq!(
            ingest_one(&ingest, br#"{"id":1}"#, &value).unwrap(),
            json_records()
        );
        assert_eq!(
            ingest_one(&ingest, &avro_update().1, &value).unwrap(),
            json_records()
        );
        assert_eq!(
            ingest_one(&ingest, &key, &avro_update().0).unwrap(),
            json_records()
        );
        // Bytes that do not decode, and a schema that does not compile.
        let err = ingest_one(&ingest, &key, &value[..value.len() - 1]).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidProtobuf, "{err}");
        registry.answer(
            "/schemas/ids/12",
            200,
            r#"{"schema":"syntax = \"proto3\"; message {","schemaType":"PROTOBUF"}"#,
        );
        let err = ingest_one(&ingest, &key, &framed(12, &[0])).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidProtobuf, "{err}");
    }

    #[test]
    fn records_in_apicurio_framing_map_as_their_json_form() {
        let registry = FakeRegistry::start();
        let (avro_value, _) = avro_update();
        let (proto_value, proto_key) = protobuf_update();
        // Apicurio's framing: byte 0, an 8-byte global id, the payload.
        let global = |id: u64, confluent: &[u8]| {
            let mut bytes = vec![0];
            bytes.extend(id.to_be_bytes());
            bytes.extend(&confluent[5..]);
            bytes
        };
        for (prefix, typed) in [("/apis/registry/v3", true), ("/apis/registry/v2", false)] {
            let kind = |k| typed.then_some(k);
            let data = |file: &str| crate::formats::testing::data_file(file);
            registry.add_apicurio(
                prefix,
                21,
                kind("AVRO"),
                &data("avro/debezium-mysql-users.avsc"),
            );
            registry.add_apicurio(
                prefix,
                22,
                kind("PROTOBUF"),
                &data("protobuf/debezium-mysql-users.proto"),
            );
            registry.add_apicurio(
                prefix,
                23,
                kind("PROTOBUF"),
                &data("protobuf/debezium-mysql-users-key.proto"),
            );
            let text = format!(
                "[[tables]]\ntable = \"demo.users\"\nkeys = [\"user:{{id}}\", \"mail:{{email}}\"]\nversion = \"binlog\"\n[schema_registry]\nurl = \"{}{prefix}\"\nframing = \"apicurio\"\n",
                registry.url()
            );
            let config = Config::parse_with_env("test", &text, Vec::new()).unwrap();
            let ingest = Ingest::new(&config, Arc::default()).unwrap();
            let key = global(23, &proto_key);
            for value in [global(21, &avro_value), global(22, &proto_value)] {
                assert_eq!(
                    ingest_one(&ingest, &key, &value).unwrap(),
                    json_records(),
                    "{prefix}"
                );
            }
            assert_eq!(registry.hits(&format!("{prefix}/ids/globalIds/21")), 1);
            // An id Apicurio does not know (its JSON error body), and one
            // past 32 bits.
            registry.answer(
                &format!("{prefix}/ids/globalIds/24"),
                404,
                r#"{"message":"No content with global id 24","error_code":404,"name":"ContentNotFoundException"}"#,
            );
            for id in [24, 1 << 40] {
                let err = ingest_one(&ingest, &key, &global(id, &proto_value)).unwrap_err();
                assert_eq!(err.reason, Reason::UnknownSchema, "{err}");
            }
        }
    }

    /// Id of a JSON Schema of the fuzzed ingest; 99 is unknown.
    const FUZZ_JSON_ID: u32 = 6;

    const FUZZ_IDS: [u32; 6] = [
        VALUE_ID,
        KEY_ID,
        PROTO_VALUE_ID,
        PROTO_KEY_ID,
        FUZZ_JSON_ID,
        99,
    ];

    /// One registry and ingest for every case of the fuzz test.
    static FUZZED: std::sync::LazyLock<(FakeRegistry, Ingest)> = std::sync::LazyLock::new(|| {
        let registry = registry();
        registry.answer(
            &format!("/schemas/ids/{FUZZ_JSON_ID}"),
            200,
            r#"{"schema":"{}","schemaType":"JSON"}"#,
        );
        serve_protobuf(&registry);
        let ingest = Ingest::new(&config(Some(&registry)), Arc::default()).unwrap();
        (registry, ingest)
    });

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Arbitrary bytes after a valid header, in the value and in the
        /// key, with an Avro envelope's id, an Avro key's, a Protobuf
        /// envelope's, a Protobuf key's, a JSON Schema's or an unknown one: a
        /// record or a dead letter, never a panic.
        #[test]
        fn arbitrary_framed_bytes_are_records_or_dead_letters(
            value_id in proptest::sample::select(FUZZ_IDS.to_vec()),
            key_id in proptest::sample::select(FUZZ_IDS.to_vec()),
            datum in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let ingest = &FUZZED.1;
            match ingest_one(ingest, &framed(key_id, &key), &framed(value_id, &datum)) {
                Ok(_) => {}
                Err(e) if value_id == 99 => proptest::prop_assert_eq!(e.reason, Reason::UnknownSchema),
                Err(e) if value_id == VALUE_ID => proptest::prop_assert!(
                    matches!(e.reason, Reason::InvalidAvro | Reason::UnknownOp | Reason::WrongType),
                    "{}", e
                ),
                Err(e) if value_id == PROTO_VALUE_ID => proptest::prop_assert!(
                    matches!(
                        e.reason,
                        Reason::InvalidProtobuf
                            | Reason::UnknownOp
                            | Reason::WrongType
                            | Reason::MissingField
                            // A change that decodes but does not map.
                            | Reason::MissingColumn
                            | Reason::MissingVersion
                            | Reason::MissingPk
                            | Reason::InvalidKey
                            | Reason::UnmappedTable
                    ),
                    "{}", e
                ),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn unknown_ids_bad_bytes_and_no_registry_are_dead_letters() {
        let registry = registry();
        let ingest = Ingest::new(&config(Some(&registry)), Arc::default()).unwrap();
        let (mut value, key) = avro_update();
        value[1..5].copy_from_slice(&99u32.to_be_bytes());
        let err = ingest_one(&ingest, &key, &value).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownSchema, "{err}");
        assert!(err.message.contains("99"), "{err}");

        let (mut value, _) = avro_update();
        value.truncate(value.len() - 3);
        let err = ingest_one(&ingest, &key, &value).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidAvro, "{err}");

        let without = Ingest::new(&config(None), Arc::default()).unwrap();
        let err = ingest_one(&without, &key, &avro_update().0).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownFormat, "{err}");
        assert!(err.message.contains("schema_registry.url"), "{err}");
    }

    #[test]
    fn records_wait_while_the_registry_is_away() {
        let registry = registry();
        let stats = Arc::new(Stats::default());
        let ingest = Ingest::new(&config(Some(&registry)), Arc::clone(&stats)).unwrap();
        let (value, key) = avro_update();
        registry.set_down(true);
        let results = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                (0..3)
                    .map(|_| ingest_one(&ingest, &key, &value))
                    .collect::<Vec<_>>()
            });
            // Two asks for the value's schema: the record is waiting.
            let path = format!("/schemas/ids/{VALUE_ID}");
            registry.wait_for_hits(&path, 2);
            assert!(!reader.is_finished(), "the record waits");
            registry.set_down(false);
            reader.join().unwrap()
        });
        let expected = json_records();
        for result in results {
            assert_eq!(result.unwrap(), expected, "none lost, none dead-lettered");
        }
        assert!(stats.registry_waits() >= 1);
    }
}
