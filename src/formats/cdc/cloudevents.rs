//! Debezium change events as its CloudEvents converter writes them
//! (`io.debezium.converters.CloudEventsConverter`, JSON envelope and JSON
//! data): the CloudEvents attributes (`specversion`, `id`, `source`,
//! `type`, `time`...); the change's `op` and `source` block as extension
//! attributes named with an `iodebezium` prefix and without underscores
//! (`iodebeziumop`, `iodebeziumtsms`, `iodebeziumtable`...), their values
//! as strings; the `transaction` block likewise with an `iodebeziumtx`
//! prefix; and `data`, holding the envelope's `before` and `after` (inside
//! the JSON converter's `schema`/`payload` wrapper when it writes schemas),
//! or the row itself.

use serde_json::value::RawValue;

use super::{SourceMeta, Transaction, change, parse_op};
use crate::dead_letter::RecordError;
use crate::formats::json::{Object, digits, missing, row, string, text, uint_or_digits};
use crate::formats::{DecodedCdc, Skip};
use crate::model::Op;

/// The operation attribute, the mark of the format beside `specversion`.
const OP: &str = "iodebeziumop";

/// The extension attributes that carry the fields of Debezium's `source`
/// block that vigil reads, and the name of each field there.
const SOURCE_ATTRIBUTES: [(&str, &str); 12] = [
    ("iodebeziumtsms", "ts_ms"),
    ("iodebeziumtsus", "ts_us"),
    ("iodebeziumlsn", "lsn"),
    ("iodebeziumsequence", "sequence"),
    ("iodebeziumfile", "file"),
    ("iodebeziumpos", "pos"),
    ("iodebeziumrow", "row"),
    ("iodebeziumgtid", "gtid"),
    ("iodebeziumtxId", "txId"),
    ("iodebeziumdb", "db"),
    ("iodebeziumschema", "schema"),
    ("iodebeziumtable", "table"),
];

/// Source fields that the source reader takes as JSON numbers: their
/// attributes hold the digits in a string.
const NUMERIC_SOURCE_FIELDS: [&str; 3] = ["ts_ms", "ts_us", "row"];

/// Whether a record is a CloudEvent of Debezium's converter.
pub(in crate::formats) fn matches(record: &Object) -> bool {
    record.has("specversion") && record.has(OP)
}

/// Decodes a CloudEvent of Debezium's converter (see [`matches`]) into the
/// change the plain envelope would give.
pub(in crate::formats) fn decode<'a>(event: &Object<'a>) -> Result<DecodedCdc<'a>, RecordError> {
    let code = event.required(OP, string)?;
    let Some(op) = parse_op(&code, event.path(OP))? else {
        return Ok(DecodedCdc::Skipped(Skip::LogicalMessage));
    };
    let mut source = SourceMeta::default();
    for (attribute, field) in SOURCE_ATTRIBUTES {
        if let Some(value) = event.get(attribute) {
            let value = if NUMERIC_SOURCE_FIELDS.contains(&field) {
                number(value)
            } else {
                value
            };
            source.read(field, value, event.path(attribute))?;
        }
    }
    let transaction = Transaction {
        id: event.field("iodebeziumtxid", text)?,
        total_order: event.field("iodebeziumtxtotalorder", uint_or_digits)?,
    };
    let mut data = event
        .object("data")?
        .ok_or_else(|| missing(event.path("data")))?;
    if data.has("schema") && data.has("payload") {
        data = data
            .object("payload")?
            .ok_or_else(|| missing(data.path("payload")))?;
    }
    let (before, after) = if data.has("before") || data.has("after") {
        (data.field("before", row)?, data.field("after", row)?)
    } else {
        match op {
            Op::Delete => (Some(data.fields), None),
            Op::Truncate => (None, None),
            Op::Create | Op::Update | Op::Read => (None, Some(data.fields)),
        }
    };
    Ok(change(op, before, after, source, transaction))
}

/// An attribute's string of decimal digits as the JSON number it spells;
/// any other value as it is (the source reader then says what is wrong).
fn number(value: &RawValue) -> &RawValue {
    value
        .get()
        .strip_prefix('"')
        .and_then(|quoted| quoted.strip_suffix('"'))
        .filter(|inner| digits(inner).is_some())
        .and_then(|inner| serde_json::from_str::<&RawValue>(inner).ok())
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use crate::dead_letter::Reason;
    use crate::formats::testing::{change, data_file, failure, samples, skipped};
    use crate::formats::{Skip, SourcePos, TableRef};
    use crate::model::Op;

    /// The plain Debezium envelope of the converter's documentation
    /// example: the same change with the attributes in `source`, `op` and
    /// `transaction`.
    const PLAIN_DOC_EXAMPLE: &str = r#"{"before":null,"after":{"pk":1,"name":"Bob"},"source":{"version":"2.7.0.Final","connector":"postgresql","name":"test_server","ts_ms":1578923739738,"snapshot":"true","db":"postgres","schema":"s1","table":"a","txId":565,"lsn":29274832,"xmin":null},"op":"r","transaction":{"id":"565","total_order":1,"data_collection_order":1}}"#;

    #[test]
    fn samples_decode_to_the_change_of_the_plain_envelope() {
        let text = data_file("samples/debezium-cloudevents.ndjson");
        let lines = samples(&text);
        assert_eq!(lines.len(), 1);
        let event = change(lines[0].value.get());
        assert_eq!(event, change(PLAIN_DOC_EXAMPLE), "{}", lines[0].what);
        assert_eq!(event.op, Op::Read);
        assert_eq!(
            event.table,
            TableRef {
                schema: Some("s1".into()),
                db: Some("postgres".into()),
                table: Some("a".into()),
            }
        );
        assert_eq!(
            event.pos,
            SourcePos {
                commit_ts_ms: Some(1578923739738),
                lsn: Some(29274832),
                tx_id: Some("565".into()),
                tx_order: Some(1),
                ..SourcePos::default()
            }
        );
    }

    #[test]
    fn fixture_decodes() {
        let text = data_file("formats/debezium-cloudevents.ndjson");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);

        // `data` in the JSON converter's schema/payload wrapper.
        let sample = data_file("samples/debezium-cloudevents.ndjson");
        let wrapped = change(lines[0]);
        assert_eq!(wrapped, change(samples(&sample)[0].value.get()));

        // A MySQL update: binlog position attributes, before and after.
        let update = change(lines[1]);
        assert_eq!(update.op, Op::Update);
        assert_eq!(update.table.db.as_deref(), Some("inventory"));
        assert_eq!(
            (
                update.pos.binlog_file,
                update.pos.binlog_pos,
                update.pos.binlog_row
            ),
            (Some(3), Some(484), Some(0))
        );
        assert_eq!(update.pos.commit_ts_ms, Some(1714564800000));
        assert!(update.before.is_some() && update.after.is_some());

        // `data` holding the row: the after image, or the before image of a
        // delete.
        let create = change(lines[2]);
        assert_eq!(create.op, Op::Create);
        assert_eq!(
            crate::formats::testing::cols(&create.after),
            [("id", "7"), ("name", "\"w\"")]
        );
        let delete = change(lines[3]);
        assert_eq!(delete.op, Op::Delete);
        assert!(delete.after.is_none());
        assert_eq!(
            crate::formats::testing::cols(&delete.before),
            [("id", "7"), ("name", "\"w\"")]
        );

        assert_eq!(skipped(lines[4]), Skip::LogicalMessage);
    }

    #[test]
    fn bad_events() {
        let cases = [
            (
                r#"{"specversion":"1.0","iodebeziumop":"x","data":{"after":{"id":1}}}"#,
                Reason::UnknownOp,
                "\"iodebeziumop\"",
            ),
            (
                r#"{"specversion":"1.0","iodebeziumop":"c"}"#,
                Reason::MissingField,
                "\"data\"",
            ),
            (
                r#"{"specversion":"1.0","iodebeziumop":"c","data":"AAAAAAEAAgICAg=="}"#,
                Reason::WrongType,
                "\"data\"",
            ),
            (
                r#"{"specversion":"1.0","iodebeziumop":"c","iodebeziumtsms":"soon","data":{"after":{"id":1}}}"#,
                Reason::WrongType,
                "\"iodebeziumtsms\"",
            ),
            (
                r#"{"specversion":"1.0","iodebeziumop":"c","iodebeziumtxtotalorder":"first","data":{"after":{"id":1}}}"#,
                Reason::WrongType,
                "\"iodebeziumtxtotalorder\"",
            ),
            (
                r#"{"specversion":"1.0","iodebeziumop":"c","data":{"after":[1]}}"#,
                Reason::WrongType,
                "\"data.after\"",
            ),
        ];
        for (value, reason, mention) in cases {
            assert_eq!(failure(value, mention), reason, "{value}");
        }
    }
}
