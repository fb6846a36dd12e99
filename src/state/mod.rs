//! Durable state: a key-value [`Store`] with column families, written in
//! atomic batches. [`RocksStore`] is the real one; [`ScratchStore`] is the
//! RocksDB store of a run that keeps no state, created when state first
//! leaves memory; [`MemStore`] keeps the same contract in memory for unit
//! tests (a property test keeps them in agreement). Values are encoded by
//! [`codec`] with a leading format byte. [`FailingStore`] wraps a store to
//! fail as a full disk does, for `vigil torture`.

pub mod codec;
pub mod failing;
mod memory;
mod rocks;
mod scratch;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub use failing::FailingStore;
pub use memory::MemStore;
pub use rocks::RocksStore;
pub use scratch::ScratchStore;

/// The column families of DESIGN.md section 8.
///
/// Every entry but input positions and storm baselines belongs to a
/// *scope*, the input partition number its records come from (always 0
/// unless `inputs.co_partitioned`), written as the first 4 bytes of its key
/// ([`codec::scoped`]), so that the state of one partition can be handed
/// over on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Per entity (keyed by its id, the hash of table and primary key):
    /// versions seen.
    Entities,
    /// Per cache key: pending changes, recent history, invalidations, fills.
    Keys,
    /// Pending deadlines, ordered by due time (see [`codec::timer_key`]).
    Timers,
    /// Input positions: the next offset to read per source and partition.
    Offsets,
    /// Glob invalidations kept for changes that arrive after them.
    Wildcards,
    /// Storm detection's baselines and storms in progress, and incident
    /// detection's windows and open incidents: this instance's own, never
    /// handed over.
    Storms,
    /// Open and recently decided transactions (keyed by transaction id):
    /// this instance's own, like storms (transaction checks need every
    /// partition on one instance).
    Transactions,
}

impl Cf {
    /// Every family, each at the index of its [`Cf::code`].
    pub const ALL: [Cf; 7] = [
        Cf::Entities,
        Cf::Keys,
        Cf::Timers,
        Cf::Offsets,
        Cf::Wildcards,
        Cf::Storms,
        Cf::Transactions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Entities => "entities",
            Cf::Keys => "keys",
            Cf::Timers => "timers",
            Cf::Offsets => "offsets",
            Cf::Wildcards => "wildcards",
            Cf::Storms => "storms",
            Cf::Transactions => "transactions",
        }
    }

    /// The family's code in changelog records.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.code() == code)
    }

    /// Whether keys start with their scope (all but input positions,
    /// storms and transactions).
    pub fn scoped(self) -> bool {
        !matches!(self, Cf::Offsets | Cf::Storms | Cf::Transactions)
    }

    /// Whether entries go to the changelog, for the next owner of their
    /// scope: all but storms and transactions (each instance's own) and
    /// timers (an index of the due times the keys hold, which the next
    /// owner rebuilds from them).
    pub fn handed_over(self) -> bool {
        !matches!(self, Cf::Storms | Cf::Transactions | Cf::Timers)
    }

    /// Whether entries of this family expire with the state retention.
    pub fn expires(self) -> bool {
        matches!(self, Cf::Entities | Cf::Keys)
    }
}

/// One write of a batch: a put, or a delete when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub cf: Cf,
    /// The input partition number the entry belongs to.
    pub scope: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Writes applied atomically: all or none.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StateBatch {
    pub writes: Vec<Write>,
}

impl StateBatch {
    pub fn put(&mut self, cf: Cf, scope: i32, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push(Write {
            cf,
            scope,
            key,
            value: Some(value),
        });
    }

    pub fn delete(&mut self, cf: Cf, scope: i32, key: Vec<u8>) {
        self.writes.push(Write {
            cf,
            scope,
            key,
            value: None,
        });
    }

    /// Adds the writes of `other` after these (taking its vector when
    /// there are none yet).
    pub fn append(&mut self, other: StateBatch) {
        if self.writes.is_empty() {
            self.writes = other.writes;
        } else {
            self.writes.extend(other.writes);
        }
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store at {path}: {message}")]
    Rocks { path: String, message: String },
    #[error("corrupt state value in {cf}: {message}")]
    Corrupt { cf: &'static str, message: String },
}

/// The event-time horizon before which expiring entries may be removed
/// (watermark minus retention), shared with the store's compaction filter.
#[derive(Debug, Clone, Default)]
pub struct RetentionHorizon(Arc<AtomicI64>);

impl RetentionHorizon {
    pub fn new() -> Self {
        RetentionHorizon(Arc::new(AtomicI64::new(i64::MIN)))
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Moves the horizon forward (it never goes back).
    pub fn advance(&self, ms: i64) {
        self.0.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether a value last touched at `touched_ms` has expired.
    pub fn expired(&self, touched_ms: i64) -> bool {
        touched_ms < self.get()
    }
}

/// How `state.cache_size` is shared out: three quarters for the keys and
/// entities the workers keep in memory (with their timers and index of open
/// keys), an eighth for RocksDB's block cache, an eighth for its memtables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes of key and entity state in memory, with the keys' timers and
    /// index of open keys, over all workers.
    pub slots: usize,
    pub block_cache: usize,
    pub memtables: usize,
}

impl MemoryBudget {
    pub fn of(cache_size: u64) -> Self {
        let total = usize::try_from(cache_size).unwrap_or(usize::MAX);
        MemoryBudget {
            slots: total / 4 * 3,
            block_cache: total / 8,
            memtables: total / 8,
        }
    }
}

/// A key-value store with column families and atomic batches.
pub trait Store: Send + Sync {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Applies every write of the batch, atomically.
    fn write(&self, batch: StateBatch) -> Result<(), StateError>;

    /// Calls `f` on every entry whose key starts with `prefix`, in key order,
    /// until `f` returns false.
    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError>;

    /// Calls `f` on every entry whose key is at or after `from` and before
    /// `to`, in key order, until `f` returns false.
    fn scan_range(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError>;

    /// The greatest key at or after `from` and before `to`, if any.
    fn last_in(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Removes every entry of a scope (a partition number, never negative):
    /// the entries of the scoped families whose key starts with it, and the
    /// input positions of that partition number (before its state is
    /// restored from elsewhere).
    fn delete_scope(&self, scope: i32) -> Result<(), StateError>;

    /// The horizon that retention removes expired entries against.
    fn retention(&self) -> &RetentionHorizon;

    /// Removes the entries of the expiring families that the horizon has
    /// passed, now (RocksDB: compacts those families, through the
    /// retention's filter). Compactions RocksDB starts on its own reach an
    /// entry only when newer writes overlap its keys, which ever-new keys
    /// (ids counting up) may never do: without a sweep now and then, the
    /// store would keep what is expired.
    fn sweep(&self) -> Result<(), StateError>;

    /// Approximate number of entries in a family (for metrics).
    fn approximate_len(&self, cf: Cf) -> u64;
}

/// Every entry of `cf` under `prefix`, in key order: what a test reads back.
#[cfg(test)]
pub(crate) fn scan_all(store: &dyn Store, cf: Cf, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan(cf, prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

#[cfg(test)]
mod tests;
