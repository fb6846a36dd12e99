//! CDC formats in JSON, one decoder each ([`debezium`], [`flat`] for
//! Debezium flattened by `ExtractNewRecordState`, [`cloudevents`] for
//! Debezium's CloudEvents converter, [`maxwell`], [`canal`], and
//! [`transaction`] for Debezium's transaction metadata), and what every
//! reader of a Debezium change shares, whatever its wire format (these JSON
//! decoders and the binary ones): the operation codes, the source metadata
//! ([`SourceMeta`]), the `transaction` block and the change they make.

pub(in crate::formats) mod canal;
pub(in crate::formats) mod cloudevents;
pub(in crate::formats) mod debezium;
pub(in crate::formats) mod flat;
pub(in crate::formats) mod maxwell;
pub(in crate::formats) mod transaction;

use std::borrow::Cow;

use serde_json::value::RawValue;
use smallvec::smallvec;

use crate::dead_letter::{Reason, RecordError};
use crate::formats::json::{
    Field, Object, Plain, binlog_file_index, digits, millis, string, text, uint, uint_or_digits,
    wrong_type,
};
use crate::formats::{CdcFormat, DecodedCdc, RawChange, Row, SourcePos, TableRef};
use crate::model::{Millis, Op};

/// An envelope's `transaction` block: the transaction's id and the order of
/// the change in it.
#[derive(Default)]
pub(in crate::formats) struct Transaction<'a> {
    pub(in crate::formats) id: Option<Cow<'a, str>>,
    pub(in crate::formats) total_order: Option<u64>,
}

impl<'a> Transaction<'a> {
    pub(in crate::formats) fn read(block: Option<&Object<'a>>) -> Result<Self, RecordError> {
        let Some(block) = block else {
            return Ok(Transaction::default());
        };
        Ok(Transaction {
            id: block.field("id", text)?,
            total_order: block.field("total_order", uint)?,
        })
    }
}

/// The change of an envelope, from its parts as every reader finds them.
/// The transaction's id, when given, wins over the source's `txId`.
pub(in crate::formats) fn change<'a>(
    op: Op,
    before: Option<Row<'a>>,
    after: Option<Row<'a>>,
    source: SourceMeta<'a>,
    transaction: Transaction<'a>,
) -> DecodedCdc<'a> {
    let (table, mut pos) = source.finish();
    if let Some(id) = transaction.id {
        pos.tx_id = Some(id);
    }
    pos.tx_order = transaction.total_order;
    DecodedCdc::Changes(smallvec![RawChange {
        format: CdcFormat::Debezium,
        table,
        op,
        before,
        after,
        pk_columns: None,
        pos,
    }])
}

/// A Debezium schema-change event (the schema history topic's value).
pub(in crate::formats) fn is_schema_change(object: &Object) -> bool {
    object.has("ddl") && object.has("tableChanges")
}

/// Maps a Debezium operation code; `None` for `m`, a logical-decoding
/// message, which carries no row change.
pub(in crate::formats) fn parse_op(code: &str, field: Field) -> Result<Option<Op>, RecordError> {
    Ok(Some(match code {
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        "t" => Op::Truncate,
        "m" => return Ok(None),
        other => {
            return Err(RecordError::new(
                Reason::UnknownOp,
                format!("{field} has unknown operation {other:?}"),
            ));
        }
    }))
}

/// Debezium source metadata, collected field by field (from the `source`
/// block, or from a flattened record's `__` fields) and then resolved into a
/// table and a [`SourcePos`].
#[derive(Default)]
pub(in crate::formats) struct SourceMeta<'a> {
    table: TableRef<'a>,
    pos: SourcePos<'a>,
    ts_ms: Option<Millis>,
    ts_us: Option<u64>,
    ts_usec: Option<u64>,
    /// The envelope's `ts_ms`: when the connector processed the change, the
    /// last fallback for the commit time.
    pub(in crate::formats) envelope_ts_ms: Option<Millis>,
}

/// A field of the `source` block that [`SourceMeta`] reads; the others are
/// of no use here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::formats) enum SourceField {
    TsMs,
    TsUs,
    TsUsec,
    Lsn,
    Sequence,
    File,
    Pos,
    Row,
    Gtid,
    TxId,
    Schema,
    Db,
    Table,
}

impl SourceField {
    /// The field of this name in the `source` block, `None` for one that
    /// is not read.
    pub(in crate::formats) fn named(key: &str) -> Option<Self> {
        Some(match key {
            "ts_ms" => Self::TsMs,
            "ts_us" => Self::TsUs,
            "ts_usec" => Self::TsUsec,
            "lsn" => Self::Lsn,
            "sequence" => Self::Sequence,
            "file" => Self::File,
            "pos" => Self::Pos,
            "row" => Self::Row,
            "gtid" => Self::Gtid,
            "txId" => Self::TxId,
            "schema" => Self::Schema,
            "db" => Self::Db,
            "table" => Self::Table,
            _ => return None,
        })
    }
}

impl<'a> SourceMeta<'a> {
    /// Reads one field of the source block, `key` being its name there and
    /// `field` how errors name it. `null` and unknown fields are ignored.
    pub(in crate::formats) fn read(
        &mut self,
        key: &str,
        value: &'a RawValue,
        field: Field,
    ) -> Result<(), RecordError> {
        match SourceField::named(key) {
            Some(source_field) => self.read_field(source_field, value, field),
            None => Ok(()),
        }
    }

    /// [`SourceMeta::read`] for a field known to be read.
    pub(in crate::formats) fn read_field(
        &mut self,
        key: SourceField,
        value: &'a RawValue,
        field: Field,
    ) -> Result<(), RecordError> {
        if value.get() == "null" {
            return Ok(());
        }
        match key {
            SourceField::TsMs => self.ts_ms = Some(millis(value, field)?),
            SourceField::TsUs => self.ts_us = Some(uint(value, field)?),
            SourceField::TsUsec => self.ts_usec = Some(uint(value, field)?),
            SourceField::Lsn => self.pos.lsn = Some(uint_or_digits(value, field)?),
            SourceField::Sequence => self.pos.commit_lsn = commit_lsn(value, field)?,
            SourceField::File => self.pos.binlog_file = binlog_file(value, field)?,
            SourceField::Pos => self.pos.binlog_pos = Some(uint_or_digits(value, field)?),
            SourceField::Row => self.pos.binlog_row = Some(uint(value, field)?),
            SourceField::Gtid => self.pos.gtid_seq = Some(gtid_seq(value, field)?),
            SourceField::TxId => self.pos.tx_id = Some(text(value, field)?),
            SourceField::Schema => self.table.schema = name(value, field)?,
            SourceField::Db => self.table.db = name(value, field)?,
            SourceField::Table => self.table.table = name(value, field)?,
        }
        Ok(())
    }

    /// Sets a field from its value read as a [`Plain`] one, as
    /// [`SourceMeta::read_field`] does from its raw text; `None` where that
    /// gives an error. `sequence` and `txId` (whose number is taken as
    /// written) are read from their raw text only: `None` too.
    pub(in crate::formats) fn set(&mut self, key: SourceField, value: Plain<'a>) -> Option<()> {
        use SourceField as F;
        match (key, value) {
            (_, Plain::Null) => {}
            (F::TsMs, Plain::Uint(n)) => self.ts_ms = Some(Millis::try_from(n).ok()?),
            (F::TsUs, Plain::Uint(n)) => self.ts_us = Some(n),
            (F::TsUsec, Plain::Uint(n)) => self.ts_usec = Some(n),
            (F::Lsn, Plain::Uint(n)) => self.pos.lsn = Some(n),
            (F::Lsn, Plain::Str(s)) => self.pos.lsn = Some(digits(&s)?),
            (F::Pos, Plain::Uint(n)) => self.pos.binlog_pos = Some(n),
            (F::Pos, Plain::Str(s)) => self.pos.binlog_pos = Some(digits(&s)?),
            (F::Row, Plain::Uint(n)) => self.pos.binlog_row = Some(n),
            (F::File, Plain::Str(s)) => self.pos.binlog_file = binlog_file_in(&s)?,
            (F::Gtid, Plain::Str(s)) => self.pos.gtid_seq = Some(gtid_seq_in(&s)?),
            (F::Schema, Plain::Str(s)) => self.table.schema = non_empty(s),
            (F::Db, Plain::Str(s)) => self.table.db = non_empty(s),
            (F::Table, Plain::Str(s)) => self.table.table = non_empty(s),
            _ => return None,
        }
        Some(())
    }

    /// The table and position. The commit time is the first positive one of
    /// `ts_ms`, `ts_us`/1000, `ts_usec`/1000 (Debezium 0.9) and the
    /// envelope's `ts_ms` (MySQL snapshot events carry `source.ts_ms` = 0).
    pub(in crate::formats) fn finish(self) -> (TableRef<'a>, SourcePos<'a>) {
        let from_us = |us: Option<u64>| us.and_then(|us| Millis::try_from(us / 1000).ok());
        let commit_ts_ms = [
            self.ts_ms,
            from_us(self.ts_us),
            from_us(self.ts_usec),
            self.envelope_ts_ms,
        ]
        .into_iter()
        .flatten()
        .find(|&ts| ts > 0);
        let pos = SourcePos {
            commit_ts_ms,
            ..self.pos
        };
        (self.table, pos)
    }
}

/// A table-naming field; the empty string (logical messages carry
/// `"table": ""`) names nothing.
fn name<'a>(value: &'a RawValue, field: Field) -> Result<Option<Cow<'a, str>>, RecordError> {
    string(value, field).map(non_empty)
}

/// A name, `None` when empty.
fn non_empty(name: Cow<'_, str>) -> Option<Cow<'_, str>> {
    (!name.is_empty()).then_some(name)
}

/// PostgreSQL's `source.sequence`: a string holding a JSON array of LSN
/// strings, `["last commit LSN", "LSN"]`; the commit LSN is the first one,
/// which may be null.
fn commit_lsn(value: &RawValue, field: Field) -> Result<Option<u64>, RecordError> {
    usual_sequence_head(value.get()).map_or_else(|| sequence_head(value, field), Ok)
}

/// The first LSN of any `source.sequence` text.
fn sequence_head(value: &RawValue, field: Field) -> Result<Option<u64>, RecordError> {
    let expected = "a string holding a JSON array of LSNs";
    let sequence = string(value, field).map_err(|_| wrong_type(field, expected, value))?;
    let lsns: Vec<&RawValue> =
        serde_json::from_str(&sequence).map_err(|_| wrong_type(field, expected, value))?;
    match lsns.first() {
        Some(first) if first.get() != "null" => uint_or_digits(first, field.at(0)).map(Some),
        _ => Ok(None),
    }
}

/// The commit LSN of `source.sequence` as the PostgreSQL connector writes
/// it, `"[\"1099\",\"1100\"]"` or `"[null,\"1100\"]"`, read from the raw
/// text without unescaping it and parsing the array inside; `None` for any
/// other text (then read the general way, with the same result).
fn usual_sequence_head(raw: &str) -> Option<Option<u64>> {
    let quoted_digits = |s: &str| digits(s.strip_prefix("\\\"")?.strip_suffix("\\\"")?);
    let (first, second) = raw
        .strip_prefix("\"[")?
        .strip_suffix("]\"")?
        .split_once(',')?;
    quoted_digits(second)?;
    match first {
        "null" => Some(None),
        _ => quoted_digits(first).map(Some),
    }
}

/// MySQL's `source.file` (`mysql-bin.000003` -> 3); the empty name, which
/// some snapshot events carry, gives `None`.
fn binlog_file(value: &RawValue, field: Field) -> Result<Option<u64>, RecordError> {
    binlog_file_in(&string(value, field)?)
        .ok_or_else(|| wrong_type(field, "a binlog file name like \"mysql-bin.000003\"", value))
}

/// [`binlog_file`] of the file name; `None` for a name that is none.
fn binlog_file_in(file: &str) -> Option<Option<u64>> {
    if file.is_empty() {
        return Some(None);
    }
    binlog_file_index(file).map(Some)
}

/// The transaction number of `source.gtid`: a MySQL GTID `uuid:23`, the
/// upper end of a GTID set interval `uuid:1-23`, or the sequence number of a
/// MariaDB GTID `0-1-23`.
fn gtid_seq(value: &RawValue, field: Field) -> Result<u64, RecordError> {
    gtid_seq_in(&string(value, field)?)
        .ok_or_else(|| wrong_type(field, "a GTID like \"uuid:23\"", value))
}

/// [`gtid_seq`] of the GTID's text.
fn gtid_seq_in(gtid: &str) -> Option<u64> {
    let last = gtid.rsplit(':').next().unwrap_or_default();
    digits(last.rsplit('-').next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_usual_sequence_reads_as_any_other() {
        use super::{Field, sequence_head, usual_sequence_head};
        let usual = [r#""[\"1099\",\"1100\"]""#, r#""[null,\"1100\"]""#];
        let unusual = [
            r#""[\"\",\"1\"]""#,
            r#""[\"1\"]""#,
            r#""[\"1\",\"2\",\"3\"]""#,
            r#""[1,\"2\"]""#,
            r#""[\"18446744073709551616\",\"1\"]""#,
            r#""[ \"1\", \"2\"]""#,
        ];
        for raw in usual.iter().chain(&unusual) {
            let value = serde_json::from_str(raw).expect("a JSON string");
            let general = sequence_head(value, Field::new("sequence"));
            match usual_sequence_head(raw) {
                Some(head) => assert_eq!(Ok(head), general, "{raw}"),
                None => assert!(!usual.contains(raw), "{raw} is read the usual way"),
            }
        }
    }
}
