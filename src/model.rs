//! Domain types shared by every stage: what a decoded database change and a
//! decoded cache event are once they leave the decoders, and where a record
//! came from.

use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Event time in milliseconds since the Unix epoch.
pub type Millis = i64;

/// Ids remembered to recognise redeliveries, oldest first. Most keys and
/// entities see one or two records: their ids are held inline, so checking
/// them reads nothing elsewhere and remembering them allocates nothing.
pub type SeenIds = SmallVec<[u64; 2]>;

/// Remembers `id` among at most `max` ids, forgetting the oldest first;
/// false if it is already there (a redelivery).
pub fn first_sighting(ids: &mut SeenIds, id: u64, max: usize) -> bool {
    if ids.contains(&id) {
        return false;
    }
    push_bounded(ids, id, max);
    true
}

/// Appends `item` to a vector of per-key or per-entity state, first
/// dropping the oldest item if it holds `max`. Such vectors hold their
/// first items inline (as many as their type says, sometimes none) and then
/// move to the heap, doubling as they grow (from one item when none is
/// inline): most keys hold one or two items of each kind.
pub fn push_bounded<A: smallvec::Array>(items: &mut SmallVec<A>, item: A::Item, max: usize) {
    if items.len() >= max {
        items.remove(0);
    }
    items.push(item);
}

/// The operation a CDC record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// A snapshot read (Debezium `r`, Maxwell `bootstrap-insert`).
    Read,
    Truncate,
}

impl Op {
    /// The short code used in outputs and ids (Debezium's letters).
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }

    /// Creates, updates and deletes oblige the services to invalidate the
    /// cache keys of the row, a truncate every key of the table (the globs
    /// of its key templates); snapshot reads do not.
    pub fn obliges_invalidation(self) -> bool {
        matches!(self, Op::Create | Op::Update | Op::Delete | Op::Truncate)
    }

    /// Whether the change is about one row, and so subject to the entity
    /// checks: every op but a truncate, which has no row (and must not move
    /// the versions of the rows it empties).
    pub fn is_row_change(self) -> bool {
        self != Op::Truncate
    }
}

/// A row version, compared lexicographically.
///
/// For `column` version sources `major` is the column value and `minor` is 0.
/// For `lsn` it is (commit LSN, change LSN), for `binlog` (file and position,
/// row) or (GTID transaction number, row), for `ts_ms` (commit time, order in
/// the transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
}

impl Version {
    pub fn new(major: u64, minor: u64) -> Self {
        Version { major, minor }
    }

    /// A single-component version (a version column's value).
    pub fn scalar(major: u64) -> Self {
        Version { major, minor: 0 }
    }

    /// Whether a cache event that carries version `v` is at least this
    /// version. Cache events carry one integer, compared with `major`.
    pub fn covered_by(self, v: u64) -> bool {
        v >= self.major
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.minor == 0 {
            write!(f, "{}", self.major)
        } else {
            write!(f, "{}.{}", self.major, self.minor)
        }
    }
}

/// Where a record came from, carried into the `evidence` of the events that
/// rest on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// The Kafka topic, or the input file's path for a bare line of a file.
    pub topic: Arc<str>,
    /// The Kafka partition (0 for a bare line of a file).
    pub partition: i32,
    /// The Kafka offset, or the 1-based line number for a bare line of a file.
    pub offset: i64,
    /// True when `topic` is a file path and `offset` a line number.
    pub from_file: bool,
}

/// Whether a cache event removes keys from the cache or writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CacheAction {
    Invalidate,
    Fill,
}

/// The `operation` field of a cache event, as the service wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CacheOperation {
    Invalidate,
    Delete,
    Update,
    Set,
    Fill,
}

impl CacheOperation {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "invalidate" => CacheOperation::Invalidate,
            "delete" => CacheOperation::Delete,
            "update" => CacheOperation::Update,
            "set" => CacheOperation::Set,
            "fill" => CacheOperation::Fill,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheOperation::Invalidate => "invalidate",
            CacheOperation::Delete => "delete",
            CacheOperation::Update => "update",
            CacheOperation::Set => "set",
            CacheOperation::Fill => "fill",
        }
    }

    pub fn action(self) -> CacheAction {
        match self {
            CacheOperation::Invalidate | CacheOperation::Delete | CacheOperation::Update => {
                CacheAction::Invalidate
            }
            CacheOperation::Set | CacheOperation::Fill => CacheAction::Fill,
        }
    }
}

/// A cache key. Keys of up to 24 bytes (most) are held inline: a key
/// travels from its decoder to its worker inside the record's batch,
/// without an allocation or a count shared between threads.
pub type CacheKey = CompactString;

/// The cache keys of a record, the first two held inline.
pub type CacheKeys = SmallVec<[CacheKey; 2]>;

/// Appends a key to a record's keys unless it is there already.
pub fn push_key_once(keys: &mut CacheKeys, key: &str) {
    if !keys.iter().any(|k| k == key) {
        keys.push(CacheKey::from(key));
    }
}

/// A decoded cache event (DESIGN.md section 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEvent {
    pub operation: CacheOperation,
    /// The cache keys, never empty; a key containing `*` is a glob (only
    /// invalidations may carry globs).
    pub keys: CacheKeys,
    /// Shared by the events of a reader that carry the same name.
    pub source_service: Option<Arc<str>>,
    pub version: Option<u64>,
    pub ts_ms: Millis,
}

impl CacheEvent {
    pub fn action(&self) -> CacheAction {
        self.operation.action()
    }
}

/// Whether a cache key is a glob pattern (wildcard invalidation).
pub fn is_glob(key: &str) -> bool {
    key.contains('*')
}
