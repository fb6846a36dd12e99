//! The RocksDB [`Store`].
//!
//! Tuning (documented here because it is part of the contract with
//! operators): one shared LRU block cache and memtables of all families
//! bounded together, each an eighth of `state.cache_size` ([`MemoryBudget`];
//! 128 MiB each by default, a memtable flushed at half that), bloom filters
//! on the families that are read by point lookups (entities, keys), in
//! their tables and their memtables, LZ4 compression, writes in key
//! order, WAL on without an fsync per batch (a crash of the machine, not
//! of the process, can lose the last batches; vigil then resumes from the
//! offsets of the last batch that reached disk, so state and position still
//! agree). Entries of the expiring families are dropped by a compaction
//! filter once their touch time is older than the retention horizon.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions,
};

use super::codec;
use super::{Cf, MemoryBudget, RetentionHorizon, StateBatch, StateError, Store};
use crate::config::StateConfig;

pub struct RocksStore {
    db: Arc<DB>,
    path: PathBuf,
    retention: RetentionHorizon,
    /// Writes go to the write-ahead log too (not for a scratch store).
    logged: bool,
}

/// A store that logs its writes flushes its memtables when it is closed,
/// so that the next open has no log to replay (after a crash it replays at
/// most `max_total_wal_size` of it). A flush that fails loses nothing: the
/// log still holds the writes, and the next open replays them.
impl Drop for RocksStore {
    fn drop(&mut self) {
        if !self.logged {
            return;
        }
        for cf in Cf::ALL {
            if let Err(e) = self.db.flush_cf(self.handle(cf)) {
                tracing::warn!(
                    path = %self.path.display(),
                    family = cf.name(),
                    error = %e,
                    "could not flush the state store on close; the next start replays its log"
                );
            }
        }
    }
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksStore {
    /// Opens (creating if needed) the store at `path`, with the memory of
    /// the default `state.cache_size`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        Self::open_with(path, MemoryBudget::of(StateConfig::default().cache_size.0))
    }

    /// Opens the RocksDB store of a [`super::ScratchStore`] at `path`,
    /// expiring entries at `retention`: as [`RocksStore::open_with`], but
    /// its writes skip the write-ahead log, since nothing is ever read back
    /// from it after a crash.
    pub(super) fn open_scratch(
        path: &Path,
        memory: MemoryBudget,
        retention: RetentionHorizon,
    ) -> Result<Self, StateError> {
        let mut store = Self::open_db(path, memory, false, retention)?;
        store.logged = false;
        Ok(store)
    }

    /// Opens (creating if needed) the store at `path`, with the block cache
    /// and memtable sizes of `memory`.
    pub fn open_with(path: &Path, memory: MemoryBudget) -> Result<Self, StateError> {
        Self::open_db(path, memory, false, RetentionHorizon::new())
    }

    /// Opens the store of a stopped instance without writing to it (for
    /// `vigil inspect`); writes through it fail.
    pub fn open_read_only(path: &Path) -> Result<Self, StateError> {
        Self::open_db(
            path,
            MemoryBudget::of(64 << 20),
            true,
            RetentionHorizon::new(),
        )
    }

    fn open_db(
        path: &Path,
        memory: MemoryBudget,
        read_only: bool,
        retention: RetentionHorizon,
    ) -> Result<Self, StateError> {
        let cache = Cache::new_lru_cache(memory.block_cache);
        let memtable = memory.memtables / 2;
        let descriptors = Cf::ALL.map(|cf| {
            ColumnFamilyDescriptor::new(cf.name(), cf_options(cf, &cache, memtable, &retention))
        });
        let mut db_opts = Options::default();
        let db = if read_only {
            DB::open_cf_descriptors_read_only(&db_opts, path, descriptors, false)
        } else {
            db_opts.create_if_missing(true);
            db_opts.create_missing_column_families(true);
            db_opts.set_max_background_jobs(2);
            db_opts.set_db_write_buffer_size(memory.memtables);
            // A write-ahead log file is deleted once every family with
            // writes in it has flushed them; families written little (input
            // positions, storms) would otherwise keep every log file since
            // their last flush, the log growing with the run. Past this the
            // families holding the oldest log back are flushed.
            db_opts.set_max_total_wal_size(memory.memtables as u64);
            DB::open_cf_descriptors(&db_opts, path, descriptors)
        }
        .map_err(|e| StateError::Rocks {
            path: path.display().to_string(),
            message: e.into_string(),
        })?;
        Ok(RocksStore {
            db: Arc::new(db),
            path: path.to_path_buf(),
            retention,
            logged: !read_only,
        })
    }

    fn err(&self, e: rocksdb::Error) -> StateError {
        StateError::Rocks {
            path: self.path.display().to_string(),
            message: e.into_string(),
        }
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family is created when the store is opened")
    }

    /// Compacts a family now, every level of it, through the retention
    /// filter (for sweeps, benchmarks and maintenance; RocksDB also compacts
    /// in the background).
    pub fn compact(&self, cf: Cf) {
        self.db
            .compact_range_cf(self.handle(cf), None::<&[u8]>, None::<&[u8]>);
    }
}

/// Share of a memtable given to its bloom filter on the families read by
/// point lookups: most lookups are of keys the store has never held (a key
/// seen for the first time), which the filter answers without searching the
/// memtable.
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

fn cf_options(cf: Cf, cache: &Cache, memtable: usize, retention: &RetentionHorizon) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_write_buffer_size(memtable);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    if matches!(cf, Cf::Entities | Cf::Keys) {
        table.set_bloom_filter(10.0, false);
        opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        opts.set_memtable_whole_key_filtering(true);
    }
    opts.set_block_based_table_factory(&table);
    if cf.expires() {
        let horizon = retention.clone();
        opts.set_compaction_filter(
            "vigil-retention",
            move |_level: u32, _key: &[u8], value: &[u8]| match codec::touched(value) {
                Some(t) if horizon.expired(t) => Decision::Remove,
                _ => Decision::Keep,
            },
        );
    }
    opts
}

/// The size of `batch` as a RocksDB write batch, at most: a 12-byte header,
/// and for each write its key and value, and up to 16 bytes of tag, family
/// and lengths.
fn encoded_len(batch: &StateBatch) -> usize {
    const HEADER: usize = 12;
    const PER_WRITE: usize = 16;
    HEADER
        + (batch.writes.iter())
            .map(|w| PER_WRITE + w.key.len() + w.value.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

/// Reads of the keys at or after `from` and before `to` only: an iterator
/// so bounded seeks and steps within them, without looking at (possibly
/// many deleted) entries beyond.
fn bounded(from: &[u8], to: &[u8]) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(from.to_vec());
    opts.set_iterate_upper_bound(to.to_vec());
    opts
}

impl Store for RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_pinned_cf(self.handle(cf), key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err(e))
    }

    /// The writes go to RocksDB in key order (a stable sort, so that two
    /// writes of one key keep theirs): a memtable takes keys in order at
    /// a fraction of the cost of keys in random order, since each insert
    /// starts its search where the last one ended. The RocksDB batch is
    /// allocated at its final size (see [`encoded_len`]), not grown and
    /// copied as the writes are added, and each family's handle is looked
    /// up once.
    fn write(&self, mut batch: StateBatch) -> Result<(), StateError> {
        batch
            .writes
            .sort_by(|a, b| (a.cf.code(), &a.key).cmp(&(b.cf.code(), &b.key)));
        let handles = Cf::ALL.map(|cf| self.handle(cf));
        let mut wb = WriteBatch::with_capacity_bytes(encoded_len(&batch));
        for w in &batch.writes {
            let h = handles[usize::from(w.cf.code())];
            match &w.value {
                Some(v) => wb.put_cf(h, &w.key, v),
                None => wb.delete_cf(h, &w.key),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        opts.disable_wal(!self.logged);
        self.db.write_opt(wb, &opts).map_err(|e| self.err(e))
    }

    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let iter = self.db.iterator_cf(
            self.handle(cf),
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) || !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn scan_range(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.handle(cf), bounded(from, to));
        iter.seek_to_first();
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            if !f(k, v) {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(|e| self.err(e))
    }

    fn last_in(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.handle(cf), bounded(from, to));
        iter.seek_to_last();
        let last = iter.key().map(<[u8]>::to_vec);
        iter.status().map_err(|e| self.err(e))?;
        Ok(last)
    }

    fn delete_scope(&self, scope: i32) -> Result<(), StateError> {
        let mut wb = WriteBatch::default();
        let (from, to) = codec::scope_range(scope);
        for cf in Cf::ALL.into_iter().filter(|cf| cf.scoped()) {
            wb.delete_range_cf(self.handle(cf), from, to);
        }
        let offsets = self.handle(Cf::Offsets);
        for item in self.db.iterator_cf(offsets, IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            if codec::parse_offset_key(&k).is_some_and(|(_, partition)| partition == scope) {
                wb.delete_cf(offsets, &k);
            }
        }
        self.db.write(wb).map_err(|e| self.err(e))
    }

    fn retention(&self) -> &RetentionHorizon {
        &self.retention
    }

    fn sweep(&self) -> Result<(), StateError> {
        for cf in Cf::ALL.into_iter().filter(|cf| cf.expires()) {
            self.compact(cf);
        }
        Ok(())
    }

    fn approximate_len(&self, cf: Cf) -> u64 {
        self.db
            .property_int_value_cf(self.handle(cf), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}
