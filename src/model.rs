//! Domain types shared by every stage: what a decoded database change and a
//! decoded cache event are once they leave the decoders, and where a record
//! came from.

use std::collections::HashSet;
use std::fmt;
use std::sync::RwLock;

use arcstr::ArcStr;
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

/// A name many records share (a topic, an input file's path, a table, a
/// cache event's service), held once for the process: copying it copies a
/// pointer. A shared string (`Arc`) would do too, but every copy and drop
/// then writes its count, one memory location for all the records of the
/// name, which the reader and the workers, on other cores, take from each
/// other: about 3 % of the CPU of `vigil check` for the topic alone (see
/// BENCHMARKS.md). The names held are few (the topics, files, tables and
/// services read); past [`MAX_NAMES`] of them (say, dead letters of many
/// topics replayed), or longer than [`MAX_HELD_BYTES`], a name is a shared
/// string again, freed with its last copy.
///
/// Both are an [`ArcStr`], one pointer (8 bytes): a held name is one made
/// static, whose copies and drops do not touch its count. A key's state
/// holds several names for each of its changes and invalidations (table,
/// topics, service), so their size counts.
#[derive(Clone)]
pub struct Name(ArcStr);

/// Distinct names held for the process at most (see [`Name`]).
const MAX_NAMES: usize = 4096;

/// Names longer than this are shared, not held: what the names held take
/// stays within `MAX_NAMES` times this, whatever names the input carries
/// (a cache event's service, a `kcat -J` line's topic).
const MAX_HELD_BYTES: usize = 256;

/// The names held, see [`Name`].
static NAMES: RwLock<Option<HashSet<ArcStr>>> = RwLock::new(None);

thread_local! {
    /// The names held that this thread has made: found without the lock
    /// of [`NAMES`], whose count every thread would write (a name made for
    /// each line of a `kcat -J` file, each state read).
    static MADE: std::cell::RefCell<HashSet<ArcStr, foldhash::fast::RandomState>> =
        Default::default();
}

impl Name {
    /// `name`, held if it is or may be (see [`Name`]).
    pub fn new(name: &str) -> Name {
        if name.len() > MAX_HELD_BYTES {
            return Name(ArcStr::from(name));
        }
        if let Some(held) = MADE.with_borrow(|made| made.get(name).cloned()) {
            return Name(held);
        }
        let held = NAMES
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|n| n.get(name).cloned());
        let made = match held {
            Some(held) => Name(held),
            None => {
                let mut names = NAMES.write().unwrap_or_else(|e| e.into_inner());
                hold(names.get_or_insert_with(HashSet::new), name, MAX_NAMES)
            }
        };
        if made.is_held() {
            MADE.with_borrow_mut(|made_here| made_here.insert(made.0.clone()));
        }
        made
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the name is held for the process (else shared, see
    /// [`Name`]).
    pub fn is_held(&self) -> bool {
        ArcStr::is_static(&self.0)
    }

    /// The copies of a shared name (none for a held one).
    pub fn shared_count(&self) -> Option<usize> {
        ArcStr::strong_count(&self.0)
    }
}

/// `name` held among `names` (found there, or added while they are fewer
/// than `max`), else shared.
fn hold(names: &mut HashSet<ArcStr>, name: &str, max: usize) -> Name {
    if let Some(held) = names.get(name) {
        return Name(held.clone());
    }
    let made = ArcStr::from(name);
    if names.len() >= max {
        return Name(made);
    }
    // Made static: never freed, and its copies do not count.
    made.leak();
    names.insert(made.clone());
    Name(made)
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Name {
        Name::new(name)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Written as the string it is, so stored state and events read the same.
impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl serde::de::Visitor<'_> for NameVisitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(Name::new(v))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// Where a record came from, carried into the `evidence` of the events that
/// rest on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// The Kafka topic, or the input file's path for a bare line of a file.
    pub topic: Name,
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
    /// Held once for the process (see [`Name`]).
    pub source_service: Option<Name>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_once_and_reads_as_its_text() {
        let (a, b) = (
            Name::new("cdc.public.orders"),
            Name::new("cdc.public.orders"),
        );
        assert!(a.is_held() && b.is_held(), "a name of a few held is held");
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "one copy of the text");
        assert_eq!(
            (a.as_str(), a.to_string()),
            ("cdc.public.orders", "cdc.public.orders".into())
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json, r#""cdc.public.orders""#,
            "written as the string it is"
        );
        assert_eq!(serde_json::from_str::<Name>(&json).unwrap(), a);
        let stored = bincode::serde::encode_to_vec(&a, bincode::config::standard()).unwrap();
        let as_str =
            bincode::serde::encode_to_vec("cdc.public.orders", bincode::config::standard());
        assert_eq!(
            stored,
            as_str.unwrap(),
            "stored state reads the same as before"
        );
    }

    #[test]
    fn names_past_the_most_held_are_shared_and_equal_all_the_same() {
        let mut names = HashSet::new();
        assert!(hold(&mut names, "a", 2).is_held());
        assert!(hold(&mut names, "b", 2).is_held());
        let c = hold(&mut names, "c", 2);
        assert!(!c.is_held(), "no third name is held");
        assert!(hold(&mut names, "a", 2).is_held(), "held ones still are");
        assert_eq!((names.len(), c.as_str()), (2, "c"));
        assert_eq!(c, Name(ArcStr::from("c")));
    }

    #[test]
    fn long_names_are_shared_not_held() {
        let long = "s".repeat(MAX_HELD_BYTES + 1);
        let name = Name::new(&long);
        assert!(!name.is_held(), "a long name is not held");
        assert_eq!(name.as_str(), long);
        let limit = "s".repeat(MAX_HELD_BYTES);
        assert!(Name::new(&limit).is_held());
    }

    #[test]
    fn names_order_as_their_text() {
        let shared = Name(ArcStr::from("b"));
        assert!(Name::new("a") < shared && shared < Name::new("c"));
    }

    #[test]
    fn a_name_is_one_pointer() {
        assert_eq!(size_of::<Name>(), size_of::<usize>());
        assert_eq!(size_of::<Option<Name>>(), size_of::<usize>());
        assert_eq!(size_of::<Provenance>(), 24);
    }
}
