//! Maxwell's JSON output: one message per row, the row in `data` and, for
//! updates, the previous values of the changed columns in `old`.

use serde_json::value::RawValue;
use smallvec::smallvec;

use crate::dead_letter::{Reason, RecordError};
use crate::formats::json::{
    Field, Object, binlog_file_index, digits, flag, millis, overlay, row, string, strings, text,
    uint, wrong_type,
};
use crate::formats::{CdcFormat, DecodedCdc, RawChange, Skip, SourcePos, TableRef};
use crate::model::{Millis, Op};

/// Maxwell's schema-change types.
const DDL_TYPES: [&str; 6] = [
    "table-create",
    "table-alter",
    "table-drop",
    "database-create",
    "database-alter",
    "database-drop",
];

/// Whether a record is a Maxwell message: a lower-case `type` with
/// `database`, and `table` (or, for database DDL, `sql` or `def`).
pub(in crate::formats) fn matches(record: &Object) -> bool {
    record.has("database")
        && (record.has("table") || record.has("sql") || record.has("def"))
        && record
            .field("type", string)
            .ok()
            .flatten()
            .is_some_and(|kind| !kind.bytes().any(|b| b.is_ascii_uppercase()))
}

/// Decodes a Maxwell message.
pub(in crate::formats) fn decode<'a>(message: &Object<'a>) -> Result<DecodedCdc<'a>, RecordError> {
    let kind = message.required("type", string)?;
    let op = match kind.as_ref() {
        "insert" => Op::Create,
        "update" => Op::Update,
        "delete" => Op::Delete,
        "bootstrap-insert" => Op::Read,
        "bootstrap-start" | "bootstrap-complete" => {
            return Ok(DecodedCdc::Skipped(Skip::BootstrapMarker));
        }
        ddl if DDL_TYPES.contains(&ddl) => return Ok(DecodedCdc::Skipped(Skip::Ddl)),
        _ if !message.has("data") && (message.has("sql") || message.has("def")) => {
            return Ok(DecodedCdc::Skipped(Skip::Ddl));
        }
        other => {
            return Err(RecordError::new(
                Reason::UnknownOp,
                format!("{} has unknown operation {other:?}", message.path("type")),
            ));
        }
    };
    let data = message.required("data", row)?;
    let (before, after) = match op {
        Op::Delete => (Some(data), None),
        Op::Update => {
            let old = message.field("old", row)?.unwrap_or_default();
            (Some(overlay(&data, old)), Some(data))
        }
        Op::Create | Op::Read | Op::Truncate => (None, Some(data)),
    };

    let (binlog_file, binlog_pos) = match message.field("position", position)? {
        Some((file, pos)) => (Some(file), Some(pos)),
        None => (None, None),
    };
    let commit_ts_ms = match message.field("ts_ms", millis)? {
        Some(ms) => Some(ms),
        None => message.field("ts", seconds_to_millis)?,
    };
    Ok(DecodedCdc::Changes(smallvec![RawChange {
        format: CdcFormat::Maxwell,
        table: TableRef {
            schema: None,
            db: message.field("database", string)?,
            table: message.field("table", string)?,
        },
        op,
        before,
        after,
        pk_columns: message.field("primary_key_columns", strings)?,
        pos: SourcePos {
            commit_ts_ms,
            binlog_file,
            binlog_pos,
            tx_id: message.field("xid", text)?,
            tx_order: message.field("xoffset", uint)?,
            tx_last: message.field("commit", flag)? == Some(true),
            ..SourcePos::default()
        },
    }]))
}

/// Maxwell's `ts`: epoch seconds.
fn seconds_to_millis(value: &RawValue, field: Field) -> Result<Millis, RecordError> {
    uint(value, field)?
        .checked_mul(1000)
        .and_then(|ms| Millis::try_from(ms).ok())
        .ok_or_else(|| wrong_type(field, "a time in seconds since the epoch", value))
}

/// Maxwell's `position`, `master.000006:800911`: the binlog file index and
/// the position in it.
fn position(value: &RawValue, field: Field) -> Result<(u64, u64), RecordError> {
    let position = string(value, field)?;
    position
        .rsplit_once(':')
        .and_then(|(file, pos)| Some((binlog_file_index(file)?, digits(pos)?)))
        .ok_or_else(|| {
            wrong_type(
                field,
                "a binlog position like \"master.000006:800911\"",
                value,
            )
        })
}

#[cfg(test)]
mod tests {
    use crate::dead_letter::Reason;
    use crate::formats::testing::{change, cols, data_file, failure, samples, skipped};
    use crate::formats::{CdcFormat, Skip, SourcePos, TableRef};
    use crate::model::Op;

    #[test]
    fn samples_decode() {
        let text = data_file("samples/maxwell.ndjson");
        let lines = samples(&text);
        assert_eq!(lines.len(), 8);

        let insert = change(lines[0].value.get());
        assert_eq!((insert.format, insert.op), (CdcFormat::Maxwell, Op::Create));
        assert_eq!(
            insert.table,
            TableRef {
                schema: None,
                db: Some("test".into()),
                table: Some("e".into()),
            }
        );
        assert_eq!(
            cols(&insert.after),
            [
                ("id", "1"),
                ("m", "4.2341"),
                ("c", "\"2016-10-21 05:33:37.523000\""),
                ("comment", "\"I am a creature of light.\"")
            ]
        );
        assert_eq!(insert.pk_columns, Some(vec!["id".into(), "c".into()]));
        assert_eq!(
            insert.pos,
            SourcePos {
                commit_ts_ms: Some(1477053217000),
                binlog_file: Some(6),
                binlog_pos: Some(800911),
                tx_id: Some("23396".into()),
                tx_last: true,
                ..SourcePos::default()
            }
        );

        let insert = change(lines[1].value.get());
        assert_eq!(
            cols(&insert.after)[4],
            ("DoubleField", "4500000001.512456777")
        );
        assert_eq!(insert.pk_columns, None);

        // `old` columns replace those of `data`; `backup_date` and
        // `DoubleField` exist only in `old` and are appended.
        let update = change(lines[2].value.get());
        assert_eq!(update.op, Op::Update);
        assert_eq!(
            cols(&update.before),
            [
                ("UserID", "20"),
                ("FirstName", "\"Foo\""),
                ("MiddleName", "null"),
                ("LastName", "\"Bar\""),
                ("Version", "1486703131000"),
                ("backup_date", "\"2017-02-08 02:00:05\""),
                ("DoubleField", "4500000001.512456777")
            ]
        );
        assert_eq!(cols(&update.after)[1], ("FirstName", "\"Fiz\""));

        // A row inside a transaction numbers itself; its last row carries
        // `commit` and no number.
        let insert = change(lines[3].value.get());
        assert_eq!(
            (
                insert.pos.tx_id.as_deref(),
                insert.pos.tx_order,
                insert.pos.tx_last
            ),
            (Some("7125"), Some(0), false)
        );
        let last = change(lines[4].value.get());
        assert_eq!(
            (
                last.pos.tx_id.as_deref(),
                last.pos.tx_order,
                last.pos.tx_last
            ),
            (Some("7125"), None, true)
        );
        assert_eq!(insert.pk_columns, Some(vec!["id".into()]));

        let update = change(lines[6].value.get());
        assert_eq!(
            cols(&update.before),
            [
                ("id", "110"),
                ("name", "\"jacket\""),
                ("description", "\"water resistent white wind breaker\""),
                ("weight", "0.2")
            ]
        );

        let delete = change(lines[7].value.get());
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(cols(&delete.before)[0], ("id", "111"));
        assert!(delete.after.is_none());
        assert_eq!(delete.pos.commit_ts_ms, Some(1596684914000));
    }

    #[test]
    fn fixture_decodes() {
        let text = data_file("formats/maxwell.ndjson");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 9);

        let insert = change(lines[0]);
        assert_eq!(insert.op, Op::Create);
        assert_eq!(
            insert.pos,
            SourcePos {
                commit_ts_ms: Some(1714564800000),
                binlog_file: Some(6),
                binlog_pos: Some(800911),
                tx_id: Some("9001".into()),
                tx_order: Some(0),
                ..SourcePos::default()
            }
        );

        let update = change(lines[1]);
        assert_eq!(
            cols(&update.before),
            [
                ("id", "42"),
                ("status", "\"NEW\""),
                ("version", "1"),
                ("paid_at", "null")
            ]
        );
        assert_eq!(
            cols(&update.after),
            [("id", "42"), ("status", "\"PAID\""), ("version", "2")]
        );

        let delete = change(lines[2]);
        assert_eq!(delete.op, Op::Delete);
        assert_eq!(delete.pos.tx_id.as_deref(), Some("9003"));
        assert_eq!(
            (delete.pos.binlog_file, delete.pos.binlog_pos),
            (Some(7), Some(4))
        );

        let read = change(lines[3]);
        assert_eq!(read.op, Op::Read);
        assert_eq!(cols(&read.after)[0], ("id", "7"));

        assert_eq!(skipped(lines[4]), Skip::BootstrapMarker);
        assert_eq!(skipped(lines[5]), Skip::BootstrapMarker);
        assert_eq!(skipped(lines[6]), Skip::Ddl);
        assert_eq!(skipped(lines[7]), Skip::Ddl);

        let insert = change(lines[8]);
        assert_eq!(insert.pos.commit_ts_ms, Some(1714564803456));
        assert_eq!(insert.pos.tx_order, Some(3));
    }

    #[test]
    fn bad_messages() {
        let cases = [
            (
                r#"{"database":"d","table":"t","type":"upsert","data":{"id":1}}"#,
                Reason::UnknownOp,
                "\"upsert\"",
            ),
            (
                r#"{"database":"d","table":"t","type":"insert"}"#,
                Reason::MissingField,
                "\"data\"",
            ),
            (
                r#"{"database":"d","table":"t","type":"insert","data":[1]}"#,
                Reason::WrongType,
                "\"data\"",
            ),
            (
                r#"{"database":"d","table":"t","type":"update","data":{"id":1},"old":"x"}"#,
                Reason::WrongType,
                "\"old\"",
            ),
            (
                r#"{"database":"d","table":"t","type":"insert","data":{},"ts":"now"}"#,
                Reason::WrongType,
                "\"ts\"",
            ),
            (
                r#"{"database":"d","table":"t","type":"insert","data":{},"position":"master:1"}"#,
                Reason::WrongType,
                "\"position\"",
            ),
            (
                r#"{"database":"d","table":"t","type":"insert","data":{},"primary_key_columns":[1]}"#,
                Reason::WrongType,
                "\"primary_key_columns[0]\"",
            ),
        ];
        for (value, reason, mention) in cases {
            assert_eq!(failure(value, mention), reason, "{value}");
        }
    }
}
