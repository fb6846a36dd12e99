//! Debezium change events in JSON (the `op`/`before`/`after`/`source`
//! envelope), read in one pass or from the parsed top level.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{SourceField, SourceMeta, Transaction, change, parse_op};
use crate::dead_letter::RecordError;
use crate::formats::json::{
    Field, Fields, Name, Object, Plain, millis, not_plain, once, row, string,
};
use crate::formats::{DecodedCdc, Row, Skip};
use crate::model::Millis;

/// Whether a record bears the marks of a Debezium envelope: `op`, with
/// `before`, `after` or `source` beside it.
pub(in crate::formats) fn is_envelope(record: &Object) -> bool {
    record.has("op") && (record.has("before") || record.has("after") || record.has("source"))
}

/// Decodes a Debezium envelope (see [`is_envelope`]) whose top level was
/// parsed into `envelope`.
pub(in crate::formats) fn decode<'a>(envelope: &Object<'a>) -> Result<DecodedCdc<'a>, RecordError> {
    let code = envelope.required("op", string)?;
    let Some(op) = parse_op(&code, envelope.path("op"))? else {
        return Ok(DecodedCdc::Skipped(Skip::LogicalMessage));
    };
    let before = envelope.field("before", row)?;
    let after = envelope.field("after", row)?;
    let mut source = SourceMeta::default();
    if let Some(block) = envelope.object("source")? {
        for (name, value) in &block.fields {
            source.read(name, value, block.path(name))?;
        }
    }
    source.envelope_ts_ms = envelope.field("ts_ms", millis)?;
    let transaction = Transaction::read(envelope.object("transaction")?.as_ref())?;
    Ok(change(op, before, after, source, transaction))
}

/// Decodes a Debezium envelope in one pass over the text, the nested
/// `before`, `after`, `source` and `transaction` objects read as they come
/// (the general reader parses the top level first, then each of them again).
/// Also takes the envelope inside the JSON converter's `schema`/`payload`
/// wrapper, skipping the schema.
///
/// Gives `None` whenever the record is anything but a well-formed envelope
/// of the usual fields: another format, a field it does not know, a field
/// twice, a wrong type, a value the general reader would reject. The caller
/// then decodes the record with the general reader, which recognises every
/// format and words every error; where this gives a result, it is the one
/// the general reader gives.
pub(in crate::formats) fn decode_one_pass(text: &str) -> Option<DecodedCdc<'_>> {
    if !opens_like_an_envelope(text) {
        return None;
    }
    let parts = serde_json::from_str::<OnePass>(text).ok()?.0;
    let Parts {
        op,
        before,
        after,
        source,
        ts_ms,
        transaction,
    } = parts;
    let code = op?;
    // The marks of an envelope (see `is_envelope`).
    if before.is_none() && after.is_none() && source.is_none() {
        return None;
    }
    let Some(op) = parse_op(&code, Field::new("op")).ok()? else {
        return Some(DecodedCdc::Skipped(Skip::LogicalMessage));
    };
    let mut source = source.unwrap_or_default();
    match ts_ms {
        None | Some(Plain::Null) => {}
        Some(Plain::Uint(ms)) => source.envelope_ts_ms = Some(Millis::try_from(ms).ok()?),
        // Not a time: the general reader says so.
        Some(_) => return None,
    }
    let transaction = transaction.flatten().map(Object::nested("transaction"));
    let transaction = Transaction::read(transaction.as_ref()).ok()?;
    Some(change(
        op,
        before.flatten(),
        after.flatten(),
        source,
        transaction,
    ))
}

/// Whether the first field of the text is one an envelope (or its wrapper)
/// has: other formats are left to the general reader without a try.
fn opens_like_an_envelope(text: &str) -> bool {
    const FIRST: [&str; 10] = [
        "before",
        "after",
        "source",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
        "transaction",
        "schema",
        "payload",
    ];
    let Some(name) = text
        .trim_ascii_start()
        .strip_prefix('{')
        .and_then(|rest| rest.trim_ascii_start().strip_prefix('"'))
    else {
        return false;
    };
    FIRST.iter().any(|field| {
        name.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with('"'))
    })
}

/// What [`decode_one_pass`] reads: each field at most once (`Some` when
/// present, with `None` inside for a `null`).
#[derive(Default)]
struct Parts<'a> {
    op: Option<Cow<'a, str>>,
    before: Option<Option<Row<'a>>>,
    after: Option<Option<Row<'a>>>,
    source: Option<SourceMeta<'a>>,
    ts_ms: Option<Plain<'a>>,
    transaction: Option<Option<Row<'a>>>,
}

/// An envelope read in one pass; at the top level (`wrapped` false) also
/// the `schema`/`payload` wrapper around one.
struct OnePass<'a>(Parts<'a>);

impl<'de> Deserialize<'de> for OnePass<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(EnvelopeVisitor { wrapped: false })
            .map(OnePass)
    }
}

/// The payload of the `schema`/`payload` wrapper.
struct Payload;

impl<'de> DeserializeSeed<'de> for Payload {
    type Value = Parts<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor { wrapped: true })
    }
}

struct EnvelopeVisitor {
    /// Inside the wrapper: no second wrapper.
    wrapped: bool,
}

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Parts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Debezium envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = Parts::default();
        let (mut schema, mut payload) = (false, None);
        while let Some(Name(name)) = map.next_key()? {
            match name.as_ref() {
                "op" => once(&mut parts.op, map.next_value::<Name>()?.0)?,
                "before" => once(
                    &mut parts.before,
                    map.next_value::<Option<Fields>>()?.map(|f| f.0),
                )?,
                "after" => once(
                    &mut parts.after,
                    map.next_value::<Option<Fields>>()?.map(|f| f.0),
                )?,
                "source" => once(&mut parts.source, map.next_value::<Source>()?.0)?,
                "ts_ms" => once(&mut parts.ts_ms, map.next_value()?)?,
                "transaction" => once(
                    &mut parts.transaction,
                    map.next_value::<Option<Fields>>()?.map(|f| f.0),
                )?,
                // Debezium 2's finer envelope times, which nothing reads.
                "ts_us" | "ts_ns" => {
                    map.next_value::<IgnoredAny>()?;
                }
                "schema" if !self.wrapped && !schema => {
                    map.next_value::<IgnoredAny>()?;
                    schema = true;
                }
                "payload" if !self.wrapped => once(&mut payload, map.next_value_seed(Payload)?)?,
                _ => return Err(not_plain()),
            }
        }
        match payload {
            Some(inner) if schema => Ok(inner),
            Some(_) => Err(not_plain()),
            None => Ok(parts),
        }
    }
}

/// The `source` block, each field read as it comes; `null` reads as none.
struct Source<'a>(SourceMeta<'a>);

impl<'de> Deserialize<'de> for Source<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(SourceVisitor).map(Source)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SourceMeta<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a source block")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(SourceMeta::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut source = SourceMeta::default();
        while let Some(SourceKey(key)) = map.next_key()? {
            match key {
                // Skipped without keeping its text: most fields of a source
                // block are of no use here.
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(key @ (SourceField::Sequence | SourceField::TxId)) => {
                    let value: &RawValue = map.next_value()?;
                    // The error is not kept: the general reader words it.
                    source
                        .read_field(key, value, Field::new("source"))
                        .map_err(|_| not_plain())?;
                }
                Some(key) => source.set(key, map.next_value()?).ok_or_else(not_plain)?,
            }
        }
        Ok(source)
    }
}

/// A key of the `source` block: the field it names, if one that is read.
struct SourceKey(Option<SourceField>);

impl<'de> Deserialize<'de> for SourceKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(SourceKeyVisitor)
    }
}

struct SourceKeyVisitor;

impl Visitor<'_> for SourceKeyVisitor {
    type Value = SourceKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(SourceKey(SourceField::named(v)))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{Field, SourceField, SourceMeta};
    use crate::dead_letter::Reason;
    use crate::formats::testing::{change, cols, data_file, failure, samples, skipped};
    use crate::formats::{
        CdcFormat, DecodedCdc, Flattened, Skip, SourcePos, TableRef, decode_cdc, decode_key,
    };
    use crate::model::Op;

    fn table<'a>(schema: Option<&'a str>, db: &'a str, table: &'a str) -> TableRef<'a> {
        TableRef {
            schema: schema.map(Cow::Borrowed),
            db: Some(Cow::Borrowed(db)),
            table: Some(Cow::Borrowed(table)),
        }
    }

    #[test]
    fn postgres_samples() {
        let text = data_file("samples/debezium-postgres.ndjson");
        let lines = samples(&text);
        assert_eq!(lines.len(), 10);
        for line in &lines {
            decode_cdc(Some(line.value.get()), Flattened::Nowhere)
                .unwrap_or_else(|e| panic!("{}: {e}", line.what));
        }

        let create = change(lines[0].value.get());
        assert_eq!(create.format, CdcFormat::Debezium);
        assert_eq!(create.op, Op::Create);
        assert_eq!(create.table, table(Some("public"), "postgres", "customers"));
        assert!(create.before.is_none());
        assert_eq!(
            cols(&create.after),
            [
                ("id", "1"),
                ("first_name", "\"Anne\""),
                ("last_name", "\"Kretchmar\""),
                ("email", "\"annek@noanswer.org\"")
            ]
        );
        assert_eq!(
            create.pos,
            SourcePos {
                commit_ts_ms: Some(1559033904863),
                lsn: Some(24023128),
                commit_lsn: Some(24023119),
                tx_id: Some("555".into()),
                ..SourcePos::default()
            }
        );

        // Debezium 0.9: the commit time is in `source.ts_usec`.
        let update = change(lines[1].value.get());
        assert_eq!(update.op, Op::Update);
        assert_eq!(
            update.table,
            table(Some("inventory"), "postgres", "products")
        );
        assert_eq!(cols(&update.before)[1], ("name", "\"rocks\""));
        assert_eq!(cols(&update.after)[1], ("name", "\"1111111111\""));
        assert_eq!(update.pos.commit_ts_ms, Some(1559208957661));
        assert_eq!(update.pos.lsn, Some(23862872));
        assert_eq!(update.pos.commit_lsn, None);
        assert_eq!(update.pos.tx_id.as_deref(), Some("577"));
        let key = lines[1].key.get();
        assert_eq!(cols(&decode_key(key)), [("id", "107")]);

        let update = change(lines[2].value.get());
        assert_eq!(update.op, Op::Update);
        assert_eq!(
            cols(&update.before)[2],
            ("description", "\"16oz carpenter's hammer\"")
        );
        assert_eq!(
            cols(&update.after)[2],
            ("description", "\"18oz carpenter hammer\"")
        );
        assert_eq!(update.pos.commit_ts_ms, Some(1596010889629));
        assert_eq!(update.pos.lsn, Some(34131104));
        assert_eq!(update.pos.tx_id.as_deref(), Some("602"));

        let delete = change(lines[3].value.get());
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(cols(&delete.before)[0], ("id", "111"));
        assert!(delete.after.is_none());
        assert_eq!(delete.pos.commit_ts_ms, Some(1596010988168));

        let read = change(lines[4].value.get());
        assert_eq!(read.op, Op::Read);
        assert_eq!(cols(&read.after)[0], ("id", "101"));
        assert_eq!(read.pos.lsn, Some(34078720));

        // Schemaless payloads decode like the wrapped ones.
        assert_eq!(change(lines[6].value.get()), change(lines[2].value.get()));
        assert_eq!(change(lines[7].value.get()), change(lines[3].value.get()));

        let bare_delete = change(lines[8].value.get());
        assert_eq!(bare_delete.op, Op::Delete);
        assert!(bare_delete.before.is_none() && bare_delete.after.is_none());

        assert_eq!(skipped(lines[9].value.get()), Skip::LogicalMessage);
        let key = lines[9].key.get();
        assert_eq!(cols(&decode_key(key)), [("prefix", "\"test-prefix\"")]);
    }

    #[test]
    fn mysql_samples() {
        let text = data_file("samples/debezium-mysql.ndjson");
        let lines = samples(&text);
        assert_eq!(lines.len(), 8);

        let read = change(lines[0].value.get());
        assert_eq!(read.op, Op::Read);
        assert_eq!(
            read.table,
            TableRef {
                schema: None,
                db: Some("inventory".into()),
                table: Some("orders".into()),
            }
        );
        assert_eq!(cols(&read.after)[0], ("order_number", "10004"));
        assert_eq!(
            read.pos,
            SourcePos {
                commit_ts_ms: Some(1718461481000),
                binlog_file: Some(3),
                binlog_pos: Some(824),
                binlog_row: Some(0),
                ..SourcePos::default()
            }
        );
        assert_eq!(
            cols(&decode_key(lines[0].key.get())),
            [("order_number", "10004")]
        );

        let delete = change(lines[1].value.get());
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(cols(&delete.before)[1], ("first_name", "\"Anne\""));
        assert_eq!(delete.pos.binlog_pos, Some(632));
        assert_eq!(delete.pos.commit_ts_ms, Some(1718486007000));
        assert_eq!(cols(&decode_key(lines[1].key.get())), [("id", "1004")]);

        // Debezium 0.10 writes `source.ts_ms` = 0: the envelope time is used.
        let create = change(lines[2].value.get());
        assert_eq!(create.op, Op::Create);
        assert_eq!(create.pos.commit_ts_ms, Some(1465491411815));
        assert_eq!(
            (
                create.pos.binlog_file,
                create.pos.binlog_pos,
                create.pos.binlog_row
            ),
            (Some(3), Some(154), Some(0))
        );
        assert_eq!(change(lines[3].value.get()), create);

        let update = change(lines[4].value.get());
        assert_eq!(update.op, Op::Update);
        assert_eq!(cols(&update.before)[1], ("first_name", "\"Anne-Marie\""));

        let read = change(lines[5].value.get());
        assert_eq!((read.op, read.pos.binlog_pos), (Op::Read, Some(797)));

        let update = change(lines[6].value.get());
        assert_eq!(update.pos.binlog_pos, Some(1041));
        assert_eq!(update.pos.commit_ts_ms, Some(1731327659000));
        assert_eq!(cols(&update.after)[1], ("first_name", "\"Sarah\""));

        assert_eq!(skipped(lines[7].value.get()), Skip::Tombstone);
        assert_eq!(cols(&decode_key(lines[7].key.get())), [("id", "1004")]);
    }

    #[test]
    fn postgres_fixture() {
        let text = data_file("formats/debezium-postgres.ndjson");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);

        let create = change(lines[0]);
        assert_eq!(create.op, Op::Create);
        assert_eq!(create.table, table(Some("public"), "shop", "orders"));
        assert_eq!(
            cols(&create.after),
            [("id", "42"), ("status", "\"NEW\""), ("version", "1")]
        );
        assert_eq!(
            create.pos,
            SourcePos {
                commit_ts_ms: Some(1714564800123),
                lsn: Some(38117256),
                commit_lsn: Some(38117000),
                tx_id: Some("7781:38117256".into()),
                tx_order: Some(1),
                ..SourcePos::default()
            }
        );

        let update = change(lines[1]);
        assert_eq!(update.op, Op::Update);
        assert_eq!(cols(&update.before)[2], ("version", "1"));
        assert_eq!(cols(&update.after)[2], ("version", "2"));
        assert_eq!(
            (update.pos.commit_lsn, update.pos.lsn, update.pos.tx_order),
            (Some(38117256), Some(38117512), Some(2))
        );

        // `sequence` with a null commit LSN; no transaction block: `txId`.
        let delete = change(lines[2]);
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(
            (delete.pos.commit_lsn, delete.pos.lsn),
            (None, Some(38117800))
        );
        assert_eq!(delete.pos.tx_id.as_deref(), Some("7783"));
        assert_eq!(delete.pos.tx_order, None);

        let read = change(lines[3]);
        assert_eq!(read.op, Op::Read);
        assert_eq!(read.pos.commit_ts_ms, Some(1714560000000));

        let truncate = change(lines[4]);
        assert_eq!(truncate.op, Op::Truncate);
        assert!(truncate.before.is_none() && truncate.after.is_none());
        assert_eq!(truncate.table, table(Some("public"), "shop", "orders"));
        assert_eq!(truncate.pos.tx_order, Some(1));

        // Escaped names, string `txId` and `lsn`, no `sequence`.
        let create = change(lines[5]);
        assert_eq!(create.table, table(Some("sales"), "shop", "order_items"));
        assert_eq!(
            cols(&create.after),
            [
                ("id", "43"),
                ("na\"me", "\"quote\\\"d\""),
                ("tags", "[\"a\", \"b\"]")
            ]
        );
        assert!(matches!(create.after.as_ref().unwrap()[0].0, Cow::Owned(_)));
        assert_eq!(create.pos.tx_id.as_deref(), Some("7791"));
        assert_eq!(
            (create.pos.lsn, create.pos.commit_lsn),
            (Some(38118200), None)
        );
    }

    #[test]
    fn mysql_fixture() {
        let text = data_file("formats/debezium-mysql.ndjson");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);

        let create = change(lines[0]);
        assert_eq!(create.op, Op::Create);
        assert_eq!(
            create.pos,
            SourcePos {
                commit_ts_ms: Some(1718461500000),
                binlog_file: Some(3),
                binlog_pos: Some(1520),
                binlog_row: Some(0),
                gtid_seq: Some(23),
                tx_id: Some("3E11FA47-71CA-11E1-9E33-C80AA9429562:23".into()),
                tx_order: Some(1),
                ..SourcePos::default()
            }
        );

        // A GTID set: the upper end of the interval; `pos` as a string.
        let update = change(lines[1]);
        assert_eq!(update.op, Op::Update);
        assert_eq!(update.pos.gtid_seq, Some(57));
        assert_eq!(
            (
                update.pos.binlog_file,
                update.pos.binlog_pos,
                update.pos.binlog_row
            ),
            (Some(12), Some(48213), Some(1))
        );

        let delete = change(lines[2]);
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(delete.pos.commit_ts_ms, Some(1718461700333));
        assert_eq!(delete.pos.gtid_seq, None);
        assert_eq!(delete.pos.binlog_row, Some(2));

        // MariaDB: `ts_ms` 0 and `ts_us`; GTID `domain-server-seq`.
        let create = change(lines[3]);
        assert_eq!(create.pos.commit_ts_ms, Some(1718461800444));
        assert_eq!(create.pos.gtid_seq, Some(42));
        assert_eq!(create.pos.binlog_file, Some(7));

        let read = change(lines[4]);
        assert_eq!(read.op, Op::Read);
        assert_eq!(read.pos.commit_ts_ms, Some(1718461000000));
    }

    #[test]
    fn heartbeats_keep_their_time_and_schema_changes_are_skipped() {
        let heartbeat = |text| decode_cdc(Some(text), Flattened::Nowhere);
        assert_eq!(
            heartbeat(r#"{"ts_ms":1714564800000}"#),
            Ok(DecodedCdc::Heartbeat(1714564800000))
        );
        assert_eq!(
            heartbeat(
                r#"{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"ts_ms"}],"optional":false,"name":"io.debezium.connector.common.Heartbeat"},"payload":{"ts_ms":1714564800000}}"#
            ),
            Ok(DecodedCdc::Heartbeat(1714564800000))
        );
        // A time that does not read as one: still a heartbeat, skipped.
        assert_eq!(skipped(r#"{"ts_ms":"soon"}"#), Skip::Heartbeat);
        assert_eq!(skipped(r#"{"schema":{},"payload":null}"#), Skip::Tombstone);
        assert_eq!(skipped("null"), Skip::Tombstone);
        assert_eq!(
            decode_cdc(None, Flattened::Nowhere),
            Ok(DecodedCdc::Skipped(Skip::Tombstone))
        );
        assert_eq!(
            skipped(
                r#"{"source":{"server":"inventory","file":"mysql-bin.000003","pos":154},"position":{"file":"mysql-bin.000003","pos":154},"databaseName":"inventory","ddl":"ALTER TABLE customers ADD COLUMN phone VARCHAR(32)","tableChanges":[]}"#
            ),
            Skip::Ddl
        );
    }

    /// The one-pass reader skips the fields that are not named: `read`
    /// must ignore those and only those.
    #[test]
    fn the_source_fields_read_are_those_named() {
        let wrong = serde_json::value::to_raw_value(&serde_json::json!({"x": 1})).unwrap();
        for name in [
            "ts_ms",
            "ts_us",
            "ts_usec",
            "lsn",
            "sequence",
            "file",
            "pos",
            "row",
            "gtid",
            "txId",
            "schema",
            "db",
            "table",
            "connector",
            "version",
            "snapshot",
            "xmin",
            "name",
        ] {
            let mut meta = SourceMeta::default();
            let read = meta.read(name, &wrong, Field::new(name)).is_err();
            assert_eq!(read, SourceField::named(name).is_some(), "{name}");
        }
    }

    #[test]
    fn bad_envelopes() {
        let cases = [
            (r#"{"op":1,"after":{"id":1}}"#, Reason::WrongType, "\"op\""),
            (
                r#"{"op":null,"after":{"id":1}}"#,
                Reason::MissingField,
                "\"op\"",
            ),
            (r#"{"op":"x","after":{"id":1}}"#, Reason::UnknownOp, "\"x\""),
            (
                r#"{"op":"c","before":"nope","after":{"id":1}}"#,
                Reason::WrongType,
                "\"before\"",
            ),
            (r#"{"op":"c","after":[1]}"#, Reason::WrongType, "\"after\""),
            (
                r#"{"op":"c","after":{"id":1},"source":"pg"}"#,
                Reason::WrongType,
                "\"source\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"source":{"ts_ms":"1714564800000"}}"#,
                Reason::WrongType,
                "\"source.ts_ms\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"source":{"lsn":-5}}"#,
                Reason::WrongType,
                "\"source.lsn\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"source":{"pos":1.5}}"#,
                Reason::WrongType,
                "\"source.pos\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"source":{"sequence":"[\"1\""}}"#,
                Reason::WrongType,
                "\"source.sequence\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"source":{"sequence":"[\"x\"]"}}"#,
                Reason::WrongType,
                "\"source.sequence[0]\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"source":{"file":"binlog"}}"#,
                Reason::WrongType,
                "\"source.file\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"source":{"gtid":"uuid:"}}"#,
                Reason::WrongType,
                "\"source.gtid\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"source":{"table":7}}"#,
                Reason::WrongType,
                "\"source.table\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"transaction":{"id":"1","total_order":"first"}}"#,
                Reason::WrongType,
                "\"transaction.total_order\"",
            ),
            (
                r#"{"op":"c","after":{"id":1},"ts_ms":-1}"#,
                Reason::WrongType,
                "\"ts_ms\"",
            ),
            (
                r#"{"schema":{},"payload":[1]}"#,
                Reason::WrongType,
                "\"payload\"",
            ),
        ];
        for (value, reason, mention) in cases {
            assert_eq!(failure(value, mention), reason, "{value}");
        }
    }
}
