//! The in-memory [`Store`]: the same contract as RocksDB, for unit tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Cf, RetentionHorizon, StateBatch, StateError, Store, codec};

type Entries = BTreeMap<(Cf, Vec<u8>), Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemStore {
    data: Mutex<Entries>,
    retention: RetentionHorizon,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore {
            data: Mutex::new(BTreeMap::new()),
            retention: RetentionHorizon::new(),
        }
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the map consistent (every
        // operation is a single insert/remove), so a poisoned lock is usable.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.data().get(&(cf, key.to_vec())).cloned())
    }

    fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        let mut data = self.data();
        for w in batch.writes {
            match w.value {
                Some(v) => data.insert((w.cf, w.key), v),
                None => data.remove(&(w.cf, w.key)),
            };
        }
        Ok(())
    }

    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let data = self.data();
        for ((c, k), v) in data.range((cf, prefix.to_vec())..) {
            if *c != cf || !k.starts_with(prefix) {
                break;
            }
            if !f(k, v) {
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
        if from >= to {
            return Ok(());
        }
        let data = self.data();
        for ((_, k), v) in data.range((cf, from.to_vec())..(cf, to.to_vec())) {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn last_in(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if from >= to {
            return Ok(None);
        }
        let data = self.data();
        let last = data
            .range((cf, from.to_vec())..(cf, to.to_vec()))
            .next_back();
        Ok(last.map(|((_, k), _)| k.clone()))
    }

    fn delete_scope(&self, scope: i32) -> Result<(), StateError> {
        let prefix = codec::scope_prefix(scope);
        self.data().retain(|(cf, key), _| match cf {
            Cf::Offsets => {
                codec::parse_offset_key(key).is_none_or(|(_, partition)| partition != scope)
            }
            cf if cf.scoped() => !key.starts_with(&prefix),
            _ => true,
        });
        Ok(())
    }

    fn retention(&self) -> &RetentionHorizon {
        &self.retention
    }

    fn sweep(&self) -> Result<(), StateError> {
        let horizon = &self.retention;
        self.data().retain(|(cf, _), value| {
            !cf.expires() || codec::touched(value).is_none_or(|t| !horizon.expired(t))
        });
        Ok(())
    }

    fn approximate_len(&self, cf: Cf) -> u64 {
        self.data().keys().filter(|(c, _)| *c == cf).count() as u64
    }
}
