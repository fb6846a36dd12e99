//! Mapping: a decoded change and its table's `[[tables]]` entry in, a
//! [`Change`] out, with its entity (table + primary key), its cache keys
//! rendered from the key templates, its version and its commit time.

use smol_str::SmolStr;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;

use hashbrown::Equivalent;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{Config, KeyTemplate, Segment, TableConfig, TableFormat, VersionSource};
use crate::dead_letter::{Reason, RecordError};
use crate::formats::{self, CdcFormat, Column, RawChange, Row, Scalar, TableRef, column};
use crate::hash;
use crate::model::{CacheKey, CacheKeys, Millis, Name, Op, Provenance, Version, push_key_once};

/// The per-table rules the detectors need, carried with every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRules {
    /// Deadline for invalidating the table's keys, in ms.
    pub deadline_ms: i64,
    /// Versions step by exactly one.
    pub contiguous: bool,
    /// Deletes carry the version of their before image (a version column),
    /// rather than a fresh position of their own.
    pub row_version: bool,
}

/// A mapped database change: one row of one table, or a truncate of the
/// table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Identity of this change record: a redelivery has the same id (see
    /// [`hash::change`]).
    pub id: u64,
    /// Identity of the entity (table + primary key).
    pub entity: u64,
    pub table: Name,
    /// The primary key as a JSON object, columns in key order: `{"id":1}`;
    /// `{}` for a truncate, which has no row. Held inline up to 23 bytes
    /// (no allocation), else shared by every copy.
    pub pk: SmolStr,
    pub op: Op,
    /// `None` only for a delete without a before image in a table versioned
    /// by a column: coverage then falls back to timestamps.
    pub version: Option<Version>,
    pub commit_ts_ms: Millis,
    /// The transaction (Debezium `transaction.id` or `source.txId`,
    /// Maxwell `xid`), held as the primary key is.
    pub tx_id: Option<SmolStr>,
    /// The change's `total_order` in its transaction, from a Debezium
    /// `transaction` block: present only when the connector publishes the
    /// transactions' BEGIN and END records, which it is counted against.
    pub tx_order: Option<u64>,
    /// Hash of the row image (after, or before for deletes).
    pub row_hash: u64,
    /// Cache keys of the row (from the after and the before image); for a
    /// truncate, the glob of each key template of the table.
    pub keys: CacheKeys,
    pub rules: TableRules,
    pub provenance: Provenance,
}

impl Change {
    /// When the invalidations of its keys are due (commit time plus the
    /// table's deadline), if it obliges any.
    pub fn invalidations_due(&self) -> Option<Millis> {
        self.op
            .obliges_invalidation()
            .then(|| self.commit_ts_ms.saturating_add(self.rules.deadline_ms))
    }
}

/// What mapping a decoded change gives. Returned once a record and taken
/// apart at once: boxing the change (its keys held inline) would cost an
/// allocation a record to save a move.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Mapped {
    Change(Change),
    /// A change of a table that `[[tables]]` does not map.
    Unmapped {
        table: String,
    },
}

struct Table {
    name: Name,
    config: TableConfig,
    rules: TableRules,
    /// The globs of the key templates, without repeats: a truncate's keys.
    globs: CacheKeys,
}

thread_local! {
    /// A decoding thread's buffer for the texts of a change (its primary
    /// key, then each cache key), each then copied: the primary key into
    /// its `Arc<str>`, a cache key into its [`CacheKey`].
    static TEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Compiled `[[tables]]`, shared by the decoding threads.
pub struct Mapper {
    tables: Vec<Table>,
    /// Qualified name -> table index.
    by_name: Names,
    /// The configured names cut at each of their dots, (before, after) ->
    /// table index: `qualifier.name` is in `by_name` exactly when
    /// (qualifier, name) is here, found without joining them.
    by_parts: hashbrown::HashMap<(String, String), usize, foldhash::fast::RandomState>,
    /// Bare table name -> table index, for names that are unambiguous.
    by_bare_name: Names,
}

/// Table names to table indexes, looked up once or twice per change.
type Names = HashMap<String, usize, foldhash::fast::RandomState>;

/// A key of [`Mapper::by_parts`], borrowed: it hashes as the tuple of
/// `String`s does (field by field, as `str`s).
#[derive(Hash)]
struct Parts<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for Parts<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl Mapper {
    pub fn new(config: &Config) -> Self {
        let tables: Vec<Table> = config
            .tables
            .iter()
            .map(|t| Table {
                name: Name::new(&t.table),
                config: t.clone(),
                rules: TableRules {
                    deadline_ms: config.deadline_of(t).as_millis_i64(),
                    contiguous: t.contiguous,
                    row_version: t.version.is_row_version(),
                },
                globs: globs(&t.keys),
            })
            .collect();
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.config.table.clone(), i))
            .collect();
        let by_parts = tables
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                let name = &t.config.table;
                name.match_indices('.')
                    .map(move |(dot, _)| ((name[..dot].into(), name[dot + 1..].into()), i))
            })
            .collect();
        let mut bare: HashMap<String, Option<usize>> = HashMap::new();
        for (i, t) in tables.iter().enumerate() {
            let name = t
                .config
                .table
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string();
            bare.entry(name)
                .and_modify(|e| *e = None)
                .or_insert(Some(i));
        }
        let by_bare_name = bare
            .into_iter()
            .filter_map(|(k, v)| v.map(|i| (k, i)))
            .collect();
        Mapper {
            tables,
            by_name,
            by_parts,
            by_bare_name,
        }
    }

    /// Maps one decoded change. `key` is the decoded Kafka key, `kafka_ts_ms`
    /// the record's Kafka timestamp (a fallback commit time).
    pub fn map(
        &self,
        raw: &RawChange<'_>,
        key: Option<&Row<'_>>,
        provenance: &Provenance,
        kafka_ts_ms: Option<Millis>,
    ) -> Result<Mapped, RecordError> {
        let Some(table) = self.resolve(&raw.table, provenance) else {
            return Ok(Mapped::Unmapped {
                table: describe_table(&raw.table, provenance),
            });
        };
        let commit_ts_ms = raw.pos.commit_ts_ms.or(kafka_ts_ms).ok_or_else(|| {
            RecordError::new(
                Reason::MissingTimestamp,
                "the change carries no commit time (source.ts_ms or equivalent) and no Kafka timestamp",
            )
        })?;
        let (pk, version, keys, row_hash) = if raw.op == Op::Truncate {
            // No row, no version: the table's every key, as globs.
            (SmolStr::new_static("{}"), None, table.globs.clone(), 0)
        } else {
            let image = match raw.op {
                Op::Delete => raw.before.as_deref(),
                _ => raw.after.as_deref(),
            };
            let pk = primary_key(table, raw, key.map(|k| &k[..]), image)?;
            let version = version_of(table, raw, image, commit_ts_ms)?;
            let (json, keys) = TEXT.with_borrow_mut(|text| {
                pk.write_json(text);
                let json = SmolStr::new(text.as_str());
                render_keys(table, raw, &pk, text).map(|keys| (json, keys))
            })?;
            (json, version, keys, image.map_or(0, formats::row_hash))
        };
        let entity = hash::entity(&table.name, &pk);
        let id = hash::change(entity, raw.op, version, commit_ts_ms, row_hash);
        Ok(Mapped::Change(Change {
            id,
            entity,
            table: table.name.clone(),
            pk,
            op: raw.op,
            version,
            commit_ts_ms,
            tx_id: raw.pos.tx_id.as_deref().map(SmolStr::new),
            tx_order: match raw.format {
                CdcFormat::Debezium => raw.pos.tx_order,
                CdcFormat::DebeziumFlat | CdcFormat::Maxwell | CdcFormat::Canal => None,
            },
            row_hash,
            keys,
            rules: table.rules,
            provenance: provenance.clone(),
        }))
    }

    /// Whether the table a record names (or, without a name, its topic's)
    /// is declared `format = "flattened"`: only there is a record without
    /// any format's marks read as a flattened row.
    pub fn reads_flattened(&self, t: &TableRef<'_>, provenance: &Provenance) -> bool {
        self.resolve(t, provenance)
            .is_some_and(|table| table.config.format == TableFormat::Flattened)
    }

    /// The `[[tables]]` name of a table as a transaction's END names it
    /// (`schema.table`, `db.table`, or longer for SQL Server: the last two
    /// parts), `None` when it is not mapped.
    pub fn collection_table(&self, collection: &str) -> Option<Name> {
        let index = self.by_name.get(collection).or_else(|| {
            let (qualifier, table) = collection.rsplit_once('.')?;
            let last = qualifier.rsplit('.').next().unwrap_or(qualifier);
            self.by_parts
                .get(&Parts(last, table))
                .or_else(|| self.by_bare_name.get(table))
        });
        index.map(|&i| self.tables[i].name.clone())
    }

    /// Finds the `[[tables]]` entry of a record: `schema.table`, `db.table`,
    /// then an unambiguous bare name; without a table name, the topic's last
    /// two segments (`server.schema.table`) or its last one.
    fn resolve(&self, t: &TableRef<'_>, provenance: &Provenance) -> Option<&Table> {
        let index = match &t.table {
            Some(name) => [t.schema.as_deref(), t.db.as_deref()]
                .into_iter()
                .flatten()
                .find_map(|q| self.by_parts.get(&Parts(q, name)))
                .or_else(|| self.by_name.get(name.as_ref()))
                .or_else(|| self.by_bare_name.get(name.as_ref())),
            None if provenance.from_file => None,
            None => {
                let topic = provenance.topic.as_ref();
                let mut parts = topic.rsplitn(3, '.');
                let last = parts.next()?;
                parts
                    .next()
                    .and_then(|q| self.by_parts.get(&Parts(q, last)))
                    .or_else(|| self.by_bare_name.get(last))
            }
        };
        index.map(|&i| &self.tables[i])
    }
}

/// The globs of the key templates, each once (two templates may differ only
/// in their columns).
fn globs(templates: &[KeyTemplate]) -> CacheKeys {
    let mut globs = CacheKeys::new();
    for glob in templates.iter().map(KeyTemplate::glob) {
        push_key_once(&mut globs, &glob);
    }
    globs
}

fn describe_table(t: &TableRef<'_>, provenance: &Provenance) -> String {
    match (&t.table, t.schema.as_deref().or(t.db.as_deref())) {
        (Some(name), Some(q)) => format!("{q}.{name}"),
        (Some(name), None) => name.to_string(),
        (None, _) if provenance.from_file => "(unnamed)".to_string(),
        (None, _) => provenance.topic.to_string(),
    }
}

/// The primary key of a change: columns of one row, all present and not
/// null, borrowed from it.
struct Pk<'r> {
    row: &'r [Column<'r>],
    names: PkNames<'r>,
}

/// Which columns of its row a [`Pk`] is, in key order.
#[derive(Debug, Clone, Copy)]
enum PkNames<'r> {
    /// Every column (a Kafka key taken whole).
    All,
    /// The table's `pk` columns.
    Configured(&'r [String]),
    /// The record's own primary-key list.
    Record(&'r [Cow<'r, str>]),
}

impl<'r> PkNames<'r> {
    /// How many columns are named (none for `All`).
    fn len(self) -> usize {
        match self {
            PkNames::All => 0,
            PkNames::Configured(names) => names.len(),
            PkNames::Record(names) => names.len(),
        }
    }

    fn get(self, i: usize) -> Option<&'r str> {
        match self {
            PkNames::All => None,
            PkNames::Configured(names) => names.get(i).map(String::as_str),
            PkNames::Record(names) => names.get(i).map(|n| n.as_ref()),
        }
    }

    fn iter(self) -> impl Iterator<Item = &'r str> {
        (0..self.len()).filter_map(move |i| self.get(i))
    }
}

impl<'r> Pk<'r> {
    /// The named columns of a row, if it has them all (non-null).
    fn pick(names: PkNames<'r>, row: &'r [Column<'r>]) -> Option<Self> {
        names
            .iter()
            .all(|n| non_null(row, n).is_some())
            .then_some(Pk { row, names })
    }

    /// The columns, in key order.
    fn columns(&self) -> impl Iterator<Item = (&'r str, &'r RawValue)> {
        let (row, names) = (self.row, self.names);
        let count = match names {
            PkNames::All => row.len(),
            named => named.len(),
        };
        (0..count).filter_map(move |i| match names {
            PkNames::All => row.get(i).map(|(c, v)| (c.as_ref(), *v)),
            named => {
                let name = named.get(i)?;
                non_null(row, name).map(|v| (name, v))
            }
        })
    }

    /// A column of the key.
    fn column(&self, name: &str) -> Option<&'r RawValue> {
        match self.names {
            PkNames::All => column(self.row, name),
            names => names
                .iter()
                .any(|n| n == name)
                .then(|| non_null(self.row, name))
                .flatten(),
        }
    }

    /// Writes the key as a compact JSON object.
    fn write_json(&self, out: &mut String) {
        out.clear();
        out.push('{');
        for (i, (name, value)) in self.columns().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(out, name);
            out.push(':');
            out.push_str(value.get().trim());
        }
        out.push('}');
    }
}

/// The first value of a column that is not null.
fn non_null<'r>(row: &'r [Column<'r>], name: &str) -> Option<&'r RawValue> {
    row.iter()
        .find(|(c, v)| c == name && v.get() != "null")
        .map(|(_, v)| *v)
}

/// Appends a JSON string of `text` as `serde_json` writes it: between quotes
/// as it is, unless it has a character that JSON escapes (a control
/// character, `"` or a backslash), which is left to `serde_json`.
fn push_json_string(out: &mut String, text: &str) {
    if text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&serde_json::to_string(text).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
}

/// The primary-key columns of the change, in key order: from the Kafka key,
/// else the `pk` columns of the table, else the record's own primary-key list.
fn primary_key<'r, 'a: 'r>(
    table: &'r Table,
    raw: &'r RawChange<'a>,
    key: Option<&'r [Column<'r>]>,
    image: Option<&'r [Column<'r>]>,
) -> Result<Pk<'r>, RecordError> {
    let configured = &table.config.pk;
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        if configured.is_empty() {
            return Ok(Pk {
                row: key,
                names: PkNames::All,
            });
        }
        if let Some(pk) = Pk::pick(PkNames::Configured(configured), key) {
            return Ok(pk);
        }
    }
    let image = image.or(raw.after.as_deref()).or(raw.before.as_deref());
    let names = if configured.is_empty() {
        PkNames::Record(raw.pk_columns.as_deref().unwrap_or_default())
    } else {
        PkNames::Configured(configured)
    };
    if names.len() == 0 {
        return Err(RecordError::new(
            Reason::MissingPk,
            format!(
                "no primary key for table {}: the record has no Kafka key and the table has no `pk` columns",
                table.name
            ),
        ));
    }
    image.and_then(|row| Pk::pick(names, row)).ok_or_else(|| {
        let names: Vec<&str> = names.iter().collect();
        RecordError::new(
            Reason::MissingPk,
            format!(
                "primary-key columns {names:?} of table {} are not all in the record (and no Kafka key supplies them)",
                table.name
            ),
        )
    })
}

/// The version of a change according to its table's version source.
fn version_of(
    table: &Table,
    raw: &RawChange<'_>,
    image: Option<&[Column<'_>]>,
    commit_ts_ms: Millis,
) -> Result<Option<Version>, RecordError> {
    let missing = |what: String| {
        RecordError::new(
            Reason::MissingVersion,
            format!("table {} is versioned by {what}", table.name),
        )
    };
    let pos = &raw.pos;
    let order = pos.tx_order.or(pos.binlog_row).unwrap_or(0);
    match &table.config.version {
        VersionSource::Column(name) => {
            let value = image
                .and_then(|row| column(row, name))
                .filter(|v| v.get() != "null");
            match value {
                None if raw.op == Op::Delete => Ok(None),
                None => Err(missing(format!(
                    "column {name:?}, which this {} record lacks",
                    raw.op.code()
                ))),
                Some(v) => integer(v).map(|n| Some(Version::scalar(n))).ok_or_else(|| {
                    missing(format!(
                        "column {name:?}, whose value {} is not a non-negative integer",
                        v.get()
                    ))
                }),
            }
        }
        VersionSource::Lsn => pos
            .lsn
            .map(|lsn| Some(Version::new(pos.commit_lsn.unwrap_or(lsn), lsn)))
            .ok_or_else(|| missing("the PostgreSQL LSN, which this record does not carry".into())),
        VersionSource::Binlog => match (pos.binlog_file, pos.binlog_pos, pos.gtid_seq) {
            (Some(file), Some(p), _) => {
                Ok(Some(Version::new((file << 32) | (p & 0xffff_ffff), order)))
            }
            (_, _, Some(gtid)) => Ok(Some(Version::new(gtid, order))),
            _ => Err(missing(
                "the MySQL binlog position or GTID, which this record does not carry".into(),
            )),
        },
        VersionSource::TsMs => Ok(Some(Version::new(
            u64::try_from(commit_ts_ms).unwrap_or(0),
            order,
        ))),
    }
}

/// A non-negative integer from a JSON number or a string of digits (Canal
/// sends every value as a string).
fn integer(v: &serde_json::value::RawValue) -> Option<u64> {
    match formats::scalar(v) {
        Scalar::Number(text) => text.parse().ok(),
        Scalar::Str(text) => text.parse().ok(),
        _ => None,
    }
}

/// Renders every key template from the after image and from the before image
/// (an update that changes a key column must invalidate the old key too),
/// with the primary-key columns available to both.
fn render_keys(
    table: &Table,
    raw: &RawChange<'_>,
    pk: &Pk<'_>,
    buf: &mut String,
) -> Result<CacheKeys, RecordError> {
    let mut keys = CacheKeys::new();
    for template in &table.config.keys {
        let images = [raw.after.as_deref(), raw.before.as_deref()];
        let mut rendered_any = false;
        for (i, image) in images.into_iter().enumerate() {
            let Some(image) = image else { continue };
            match render(template, image, pk, buf) {
                Ok(()) => {
                    rendered_any = true;
                    push_key_once(&mut keys, buf);
                }
                // A partial before image (PostgreSQL's default replica
                // identity) need not carry every key column.
                Err(_) if i == 1 && rendered_any => {}
                Err(e) => return Err(e),
            }
        }
        if !rendered_any {
            render(template, &[], pk, buf)?;
            keys.push(CacheKey::from(buf.as_str()));
        }
    }
    Ok(keys)
}

fn render(
    template: &KeyTemplate,
    image: &[Column<'_>],
    pk: &Pk<'_>,
    out: &mut String,
) -> Result<(), RecordError> {
    out.clear();
    for segment in template.segments() {
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Column(name) => {
                let value = column(image, name).or_else(|| pk.column(name));
                match value.map(formats::scalar) {
                    Some(Scalar::Str(s)) => out.push_str(&s),
                    Some(Scalar::Number(n)) => out.push_str(n),
                    Some(Scalar::Bool(b)) => {
                        let _ = write!(out, "{b}");
                    }
                    Some(Scalar::Null) | None => {
                        return Err(RecordError::new(
                            Reason::MissingColumn,
                            format!(
                                "key template {template:?} needs column {name:?}, which the row lacks or has null"
                            ),
                        ));
                    }
                    Some(Scalar::Nested(_)) => {
                        return Err(RecordError::new(
                            Reason::InvalidKey,
                            format!(
                                "key template {template:?}: column {name:?} is an object or array, not a scalar"
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
