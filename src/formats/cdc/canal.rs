//! Canal flat messages (`canal-json`): one message per binlog event, carrying
//! every changed row in `data` and, for updates, the previous values of the
//! changed columns in the parallel array `old`.
//!
//! A flat message names no transaction: Canal drops the transaction's
//! BEGIN and END entries when it flattens a batch, and `id` numbers the
//! batch Canal fetched (up to `canal.mq.canalBatchSize` entries, which may
//! hold several transactions or part of one), so it is not read as one.

use smallvec::smallvec;

use crate::dead_letter::{Reason, RecordError};
use crate::formats::json::{Field, Object, array, flag, millis, overlay, row, string, strings};
use crate::formats::{
    CdcFormat, DecodedCdc, RawChange, RawChanges, Row, Skip, SourcePos, TableRef,
};
use crate::model::Op;

/// Whether a record is a Canal flat message: it has `isDdl`, or an upper-case
/// `type` with `data` and `database`.
pub(in crate::formats) fn matches(record: &Object) -> bool {
    record.has("isDdl")
        || (record.has("data")
            && record.has("database")
            && record
                .field("type", string)
                .ok()
                .flatten()
                .is_some_and(|kind| {
                    kind.bytes().any(|b| b.is_ascii_uppercase())
                        && !kind.bytes().any(|b| b.is_ascii_lowercase())
                }))
}

/// Decodes a Canal flat message into one change per row of `data`.
pub(in crate::formats) fn decode<'a>(message: &Object<'a>) -> Result<DecodedCdc<'a>, RecordError> {
    if message.field("isDdl", flag)? == Some(true) {
        return Ok(DecodedCdc::Skipped(Skip::Ddl));
    }
    let kind = message.required("type", string)?;
    let op = match kind.as_ref() {
        "INSERT" => Op::Create,
        "UPDATE" => Op::Update,
        "DELETE" => Op::Delete,
        "TRUNCATE" => Op::Truncate,
        other => {
            return Err(RecordError::new(
                Reason::UnknownOp,
                format!("{} has unknown operation {other:?}", message.path("type")),
            ));
        }
    };
    let table = TableRef {
        schema: None,
        db: message.field("database", string)?,
        table: message.field("table", string)?,
    };
    let pk_columns = message.field("pkNames", strings)?;
    let pos = SourcePos {
        commit_ts_ms: match message.field("es", millis)? {
            Some(es) => Some(es),
            None => message.field("ts", millis)?,
        },
        ..SourcePos::default()
    };
    let change = |before: Option<Row<'a>>, after: Option<Row<'a>>, tx_order| RawChange {
        format: CdcFormat::Canal,
        table: table.clone(),
        op,
        before,
        after,
        pk_columns: pk_columns.clone(),
        pos: SourcePos {
            tx_order,
            ..pos.clone()
        },
    };
    if op == Op::Truncate {
        return Ok(DecodedCdc::Changes(smallvec![change(None, None, None)]));
    }

    let rows = message.required("data", array)?;
    if rows.is_empty() {
        return Err(RecordError::new(
            Reason::MissingField,
            format!("{} has no rows", message.path("data")),
        ));
    }
    let old = match op {
        Op::Update => message.field("old", array)?.unwrap_or_default(),
        _ => Vec::new(),
    };
    let data = Field::new("data");
    let mut changes = RawChanges::with_capacity(rows.len());
    for (i, value) in rows.into_iter().enumerate() {
        let image = row(value, data.at(i))?;
        let (before, after) = match op {
            Op::Delete => (Some(image), None),
            Op::Update => {
                let previous = match old.get(i) {
                    Some(v) if v.get() != "null" => row(v, Field::new("old").at(i))?,
                    _ => Row::new(),
                };
                (Some(overlay(&image, previous)), Some(image))
            }
            Op::Create | Op::Read | Op::Truncate => (None, Some(image)),
        };
        changes.push(change(before, after, Some(i as u64)));
    }
    Ok(DecodedCdc::Changes(changes))
}

#[cfg(test)]
mod tests {
    use crate::dead_letter::Reason;
    use crate::formats::testing::{change, changes, cols, data_file, failure, samples, skipped};
    use crate::formats::{CdcFormat, Skip, SourcePos, TableRef};
    use crate::model::Op;

    #[test]
    fn samples_decode() {
        let text = data_file("samples/canal.ndjson");
        let lines = samples(&text);
        assert_eq!(lines.len(), 8);

        let update = change(lines[0].value.get());
        assert_eq!((update.format, update.op), (CdcFormat::Canal, Op::Update));
        assert_eq!(
            update.table,
            TableRef {
                schema: None,
                db: Some("inventory".into()),
                table: Some("products".into()),
            }
        );
        assert_eq!(cols(&update.before)[3], ("weight", "\"5.15\""));
        assert_eq!(cols(&update.after)[3], ("weight", "\"5.18\""));
        assert_eq!(update.pk_columns, Some(vec!["id".into()]));
        assert_eq!(
            update.pos,
            SourcePos {
                commit_ts_ms: Some(1589373560000),
                tx_order: Some(0),
                ..SourcePos::default()
            }
        );

        let inserts = changes(lines[1].value.get());
        assert_eq!(inserts.len(), 9);
        for (i, insert) in inserts.iter().enumerate() {
            assert_eq!(insert.op, Op::Create);
            assert!(insert.before.is_none());
            assert_eq!(insert.pos.tx_order, Some(i as u64));
            assert_eq!(insert.table.table.as_deref(), Some("products2"));
        }
        assert_eq!(cols(&inserts[0].after)[0], ("id", "\"101\""));
        assert_eq!(cols(&inserts[8].after)[1], ("name", "\"spare tire\""));

        let update = change(lines[2].value.get());
        assert_eq!(
            cols(&update.before)[2],
            ("description", "\"16oz carpenter's hammer\"")
        );

        let update = change(lines[3].value.get());
        assert_eq!(
            cols(&update.before),
            [
                ("id", "\"110\""),
                ("name", "\"jacket\""),
                ("description", "\"water resistent white wind breaker\""),
                ("weight", "\"0.2\"")
            ]
        );

        let delete = change(lines[4].value.get());
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(cols(&delete.before)[3], ("weight", "\"5.17\""));
        assert!(delete.after.is_none());

        // Two rows, each with its own `old`.
        let updates = changes(lines[5].value.get());
        assert_eq!(updates.len(), 2);
        assert_eq!(cols(&updates[0].before)[3], ("weight", "\"3.14\""));
        assert_eq!(cols(&updates[0].after)[3], ("weight", "\"5.17\""));
        assert_eq!(cols(&updates[1].before)[0], ("id", "\"102\""));
        assert_eq!(cols(&updates[1].before)[3], ("weight", "\"8.1\""));
        assert_eq!(updates[1].pos.tx_order, Some(1));

        let deletes = changes(lines[6].value.get());
        assert_eq!(deletes.len(), 2);
        assert_eq!(cols(&deletes[1].before)[0], ("id", "\"103\""));

        assert_eq!(skipped(lines[7].value.get()), Skip::Ddl);
    }

    #[test]
    fn fixture_decodes() {
        let text = data_file("formats/canal.ndjson");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);

        let inserts = changes(lines[0]);
        assert_eq!(inserts.len(), 3);
        assert_eq!(
            cols(&inserts[2].after),
            [("id", "\"3\""), ("sku", "\"A-3\""), ("stock", "null")]
        );
        assert_eq!(inserts[2].pos.tx_order, Some(2));
        assert_eq!(inserts[2].pos.commit_ts_ms, Some(1714564800000));
        // `id` numbers Canal's batch, not a transaction.
        assert_eq!(inserts[2].pos.tx_id, None);

        let updates = changes(lines[1]);
        assert_eq!(
            cols(&updates[0].before),
            [("id", "\"1\""), ("sku", "\"A-1\""), ("stock", "\"10\"")]
        );
        assert_eq!(
            cols(&updates[1].before),
            [("id", "\"2\""), ("sku", "\"A-2\""), ("stock", "\"0\"")]
        );
        assert_eq!(
            cols(&updates[1].after),
            [("id", "\"2\""), ("sku", "\"A-2b\""), ("stock", "\"5\"")]
        );

        let delete = change(lines[2]);
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(cols(&delete.before)[0], ("id", "\"3\""));

        assert_eq!(skipped(lines[3]), Skip::Ddl);

        // No `es`: `ts`; `pkNames` null.
        let insert = change(lines[4]);
        assert_eq!(insert.pos.commit_ts_ms, Some(1714564804321));
        assert_eq!(insert.pk_columns, None);
    }

    #[test]
    fn truncate_has_no_rows() {
        let truncate = change(
            r#"{"data":null,"database":"shop","es":1714564805000,"id":106,"isDdl":false,"table":"inventory","ts":1714564805321,"type":"TRUNCATE"}"#,
        );
        assert_eq!(truncate.op, Op::Truncate);
        assert!(truncate.before.is_none() && truncate.after.is_none());
        assert_eq!(truncate.pos.tx_order, None);
    }

    #[test]
    fn update_without_old_has_the_after_image_as_before() {
        let update = change(
            r#"{"data":[{"id":"1","v":"2"}],"database":"d","table":"t","isDdl":false,"type":"UPDATE","old":[null]}"#,
        );
        assert_eq!(cols(&update.before), cols(&update.after));
    }

    #[test]
    fn bad_messages() {
        let cases = [
            (
                r#"{"data":{"id":"1"},"database":"d","table":"t","isDdl":false,"type":"INSERT"}"#,
                Reason::WrongType,
                "\"data\"",
            ),
            (
                r#"{"data":[{"id":"1"},"2"],"database":"d","table":"t","isDdl":false,"type":"INSERT"}"#,
                Reason::WrongType,
                "\"data[1]\"",
            ),
            (
                r#"{"data":[],"database":"d","table":"t","isDdl":false,"type":"INSERT"}"#,
                Reason::MissingField,
                "\"data\"",
            ),
            (
                r#"{"database":"d","table":"t","isDdl":false,"type":"INSERT"}"#,
                Reason::MissingField,
                "\"data\"",
            ),
            (
                r#"{"data":[{}],"database":"d","table":"t","isDdl":false,"type":"UPSERT"}"#,
                Reason::UnknownOp,
                "\"UPSERT\"",
            ),
            (
                r#"{"data":[{}],"database":"d","table":"t","isDdl":"no","type":"INSERT"}"#,
                Reason::WrongType,
                "\"isDdl\"",
            ),
            (
                r#"{"data":[{}],"database":"d","table":"t","isDdl":false}"#,
                Reason::MissingField,
                "\"type\"",
            ),
            (
                r#"{"data":[{}],"database":"d","table":"t","isDdl":false,"type":"UPDATE","old":[7]}"#,
                Reason::WrongType,
                "\"old[0]\"",
            ),
            (
                r#"{"data":[{}],"database":"d","table":"t","isDdl":false,"type":"INSERT","es":"soon"}"#,
                Reason::WrongType,
                "\"es\"",
            ),
        ];
        for (value, reason, mention) in cases {
            assert_eq!(failure(value, mention), reason, "{value}");
        }
    }
}
