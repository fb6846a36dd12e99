//! The scratch store of `vigil check` without `--state`: where keys and
//! entities go when they leave memory beyond `state.cache_size` (with
//! their timers and the retained globs), in RocksDB, created at the first
//! such write. Nothing resumes from it, so what only a restart reads (input
//! positions, storm and incident state, transactions) is not written to
//! it, and a run whose state fits in memory never creates it: creating,
//! opening and closing RocksDB (its column families, manifest and option
//! files, its threads) took about 80 ms of wall time, almost all of a
//! check of empty inputs.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

use super::{Cf, MemoryBudget, RetentionHorizon, RocksStore, StateBatch, StateError, Store};

pub struct ScratchStore {
    path: PathBuf,
    memory: MemoryBudget,
    /// The horizon the sink moves, given to the RocksDB store once opened.
    retention: RetentionHorizon,
    /// The RocksDB store, once a write needed it.
    db: OnceLock<RocksStore>,
    /// Held while the RocksDB store is opened.
    opening: Mutex<()>,
}

impl ScratchStore {
    /// A scratch store at `path` (not created yet) with the block cache and
    /// memtable sizes of `memory`.
    pub fn new(path: PathBuf, memory: MemoryBudget) -> Self {
        ScratchStore {
            path,
            memory,
            retention: RetentionHorizon::new(),
            db: OnceLock::new(),
            opening: Mutex::new(()),
        }
    }

    /// The RocksDB store, opened (and created) if it is not yet.
    fn opened(&self) -> Result<&RocksStore, StateError> {
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let _held = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let db = RocksStore::open_scratch(&self.path, self.memory, self.retention.clone())?;
        Ok(self.db.get_or_init(|| db))
    }

    /// Whether a family holds what left memory (the others are not kept).
    fn kept(cf: Cf) -> bool {
        matches!(cf, Cf::Entities | Cf::Keys | Cf::Timers | Cf::Wildcards)
    }
}

/// Before the RocksDB store is created it holds nothing: reads find
/// nothing, and there is nothing to delete, sweep or count.
impl Store for ScratchStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db.get().map_or(Ok(None), |db| db.get(cf, key))
    }

    fn write(&self, mut batch: StateBatch) -> Result<(), StateError> {
        batch.writes.retain(|w| Self::kept(w.cf));
        if batch.is_empty() {
            return Ok(());
        }
        self.opened()?.write(batch)
    }

    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.db.get().map_or(Ok(()), |db| db.scan(cf, prefix, f))
    }

    fn scan_range(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.db
            .get()
            .map_or(Ok(()), |db| db.scan_range(cf, from, to, f))
    }

    fn last_in(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get()
            .map_or(Ok(None), |db| db.last_in(cf, from, to))
    }

    fn delete_scope(&self, scope: i32) -> Result<(), StateError> {
        self.db.get().map_or(Ok(()), |db| db.delete_scope(scope))
    }

    fn retention(&self) -> &RetentionHorizon {
        &self.retention
    }

    fn sweep(&self) -> Result<(), StateError> {
        self.db.get().map_or(Ok(()), |db| db.sweep())
    }

    fn approximate_len(&self, cf: Cf) -> u64 {
        self.db.get().map_or(0, |db| db.approximate_len(cf))
    }
}
