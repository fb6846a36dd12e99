//! Debezium records flattened by the `ExtractNewRecordState` transform: the
//! row's columns plus metadata fields named with a `__` prefix (`__op`,
//! `__table`, `__lsn`, `__source_ts_ms`, `__deleted`...).

use smallvec::smallvec;

use super::{SourceMeta, parse_op};
use crate::dead_letter::RecordError;
use crate::formats::json::{Field, Object, flag, millis, string, unrecognised};
use crate::formats::{CdcFormat, DecodedCdc, RawChange, Skip, TableRef};
use crate::model::Op;

const META_PREFIX: &str = "__";

/// The table a flattened record names (`__table`, `__db`, `__schema`), to
/// ask whether it is declared flattened before decoding it. Names that are
/// not strings name nothing here; [`decode`] reports them.
pub(in crate::formats) fn table<'a>(record: &Object<'a>) -> TableRef<'a> {
    let name = |field: &str| {
        record
            .field(field, string)
            .ok()
            .flatten()
            .filter(|name| !name.is_empty())
    };
    TableRef {
        schema: name("__schema"),
        db: name("__db"),
        table: name("__table"),
    }
}

/// Decodes a flattened record. Without `__op` or `__deleted` the record is
/// taken as an update carrying the after image.
pub(in crate::formats) fn decode(record: Object<'_>) -> Result<DecodedCdc<'_>, RecordError> {
    if record.fields.is_empty() {
        return Err(unrecognised(&record));
    }
    let mut source = SourceMeta::default();
    let mut code = None;
    let mut deleted = false;
    for (name, value) in &record.fields {
        let Some(meta) = name.strip_prefix(META_PREFIX) else {
            continue;
        };
        let value = *value;
        if value.get() == "null" {
            continue;
        }
        let field = Field::new(name);
        match meta {
            "op" => code = Some(string(value, field)?),
            "deleted" => deleted = flag(value, field)?,
            "ts_ms" => source.envelope_ts_ms = Some(millis(value, field)?),
            // `add.fields=source.ts_ms` gives `__source_ts_ms`, `lsn` gives `__lsn`.
            _ => source.read(meta.strip_prefix("source_").unwrap_or(meta), value, field)?,
        }
    }

    let op = match (&code, deleted) {
        (_, true) => Op::Delete,
        (Some(code), false) => match parse_op(code, Field::new("__op"))? {
            Some(op) => op,
            None => return Ok(DecodedCdc::Skipped(Skip::LogicalMessage)),
        },
        (None, false) => Op::Update,
    };
    let mut row = record.fields;
    row.retain(|(name, _)| !name.starts_with(META_PREFIX));
    let (before, after) = match op {
        Op::Delete => (Some(row), None),
        Op::Truncate => (None, None),
        Op::Create | Op::Update | Op::Read => (None, Some(row)),
    };
    let (table, pos) = source.finish();
    Ok(DecodedCdc::Changes(smallvec![RawChange {
        format: CdcFormat::DebeziumFlat,
        table,
        op,
        before,
        after,
        pk_columns: None,
        pos,
    }]))
}

#[cfg(test)]
mod tests {
    use crate::dead_letter::Reason;
    use crate::formats::testing::{change, cols, data_file, failure, samples};
    use crate::formats::{CdcFormat, Flattened, SourcePos, TableRef, decode_cdc};
    use crate::model::Op;

    #[test]
    fn samples_decode() {
        let text = data_file("samples/debezium-flattened.ndjson");
        let lines = samples(&text);
        assert_eq!(lines.len(), 5);

        let plain = change(lines[0].value.get());
        assert_eq!(
            (plain.format, plain.op),
            (CdcFormat::DebeziumFlat, Op::Update)
        );
        assert_eq!(
            cols(&plain.after),
            [("field1", "\"newvalue1\""), ("field2", "\"newvalue2\"")]
        );
        assert_eq!(plain.table, TableRef::default());

        let deleted = change(lines[1].value.get());
        assert_eq!(deleted.op, Op::Delete);
        assert_eq!(cols(&deleted.before), [("pk", "2"), ("cola", "null")]);
        assert!(deleted.after.is_none());

        let read = change(lines[2].value.get());
        assert_eq!(read.op, Op::Read);
        assert_eq!(read.table.table.as_deref(), Some("orders"));
        assert_eq!(
            cols(&read.after),
            [
                ("id", "10003"),
                ("order_date", "16850"),
                ("purchaser", "1002"),
                ("quantity", "2"),
                ("product_id", "106")
            ]
        );
        assert_eq!(
            read.pos,
            SourcePos {
                commit_ts_ms: Some(1596309876678),
                lsn: Some(33832960),
                ..SourcePos::default()
            }
        );

        let create = change(lines[3].value.get());
        assert_eq!(create.op, Op::Create);
        assert_eq!(create.table.db.as_deref(), Some("postgres"));
        assert_eq!(create.table.table.as_deref(), Some("array_data"));
        assert_eq!(
            cols(&create.after)[1],
            ("pay_by_quarter", "[10000,10001,10002,10003]")
        );
        assert_eq!(create.pos.commit_ts_ms, Some(1638128893618));

        let read = change(lines[4].value.get());
        assert_eq!(read.op, Op::Read);
        assert_eq!(
            cols(&read.after),
            [
                ("id", "1"),
                ("g", r#"{"wkb":"AQEAAAAAAAAAAADwPwAAAAAAAPA/","srid":123}"#),
                ("h", "null")
            ]
        );
    }

    #[test]
    fn fixture_decodes() {
        let text = data_file("formats/debezium-flattened.ndjson");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8);

        let plain = change(lines[0]);
        assert_eq!(plain.op, Op::Update);
        assert_eq!(
            cols(&plain.after),
            [("id", "1"), ("name", "\"widget\""), ("price", "9.99")]
        );
        assert_eq!(plain.pos, SourcePos::default());

        let deleted = change(lines[1]);
        assert_eq!(deleted.op, Op::Delete);
        assert_eq!(cols(&deleted.before), [("id", "2"), ("name", "null")]);

        let create = change(lines[2]);
        assert_eq!(create.op, Op::Create);
        assert_eq!(
            create.table,
            TableRef {
                schema: Some("public".into()),
                db: Some("shop".into()),
                table: Some("products".into()),
            }
        );
        assert_eq!(cols(&create.after), [("id", "3"), ("name", "\"gadget\"")]);
        assert_eq!(
            (create.pos.lsn, create.pos.commit_ts_ms),
            (Some(38117256), Some(1714564800123))
        );

        let delete = change(lines[3]);
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(cols(&delete.before), [("id", "4"), ("name", "\"gizmo\"")]);
        assert!(delete.after.is_none());

        // Only the envelope time.
        let update = change(lines[4]);
        assert_eq!(update.op, Op::Update);
        assert_eq!(update.pos.commit_ts_ms, Some(1714564802000));

        // `__source_` fields; the source time wins over the envelope's.
        let read = change(lines[5]);
        assert_eq!(read.op, Op::Read);
        assert_eq!(
            read.pos,
            SourcePos {
                commit_ts_ms: Some(1714564803000),
                lsn: Some(38117999),
                tx_id: Some("7781".into()),
                ..SourcePos::default()
            }
        );

        let wrapped = change(lines[6]);
        assert_eq!(wrapped.op, Op::Update);
        assert_eq!(cols(&wrapped.after), [("id", "7"), ("name", "\"whatsit\"")]);

        let truncate = change(lines[7]);
        assert_eq!(truncate.op, Op::Truncate);
        assert!(truncate.before.is_none() && truncate.after.is_none());
        assert_eq!(truncate.pos.commit_ts_ms, Some(1714564900000));
    }

    #[test]
    fn bad_records() {
        assert_eq!(failure("{}", "no fields"), Reason::UnknownFormat);
        assert_eq!(
            failure(r#"{"id":1,"__op":"z"}"#, "\"__op\""),
            Reason::UnknownOp
        );
        assert_eq!(
            failure(r#"{"id":1,"__op":5}"#, "\"__op\""),
            Reason::WrongType
        );
        assert_eq!(
            failure(r#"{"id":1,"__deleted":"yes"}"#, "\"__deleted\""),
            Reason::WrongType
        );
        assert_eq!(
            failure(r#"{"id":1,"__lsn":"0/16B3748"}"#, "\"__lsn\""),
            Reason::WrongType
        );
        assert_eq!(
            failure(r#"{"id":1,"__source_ts_ms":1.5e12}"#, "\"__source_ts_ms\""),
            Reason::WrongType
        );
        assert!(
            decode_cdc(
                Some(r#"{"id":1,"__op":null,"__deleted":null}"#),
                Flattened::Everywhere
            )
            .is_ok()
        );
    }
}
