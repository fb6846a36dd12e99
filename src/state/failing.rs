//! A [`Store`] that fails as a full disk does: after a given number of
//! batches written, every further write fails, and nothing of the failed
//! batches reaches the store underneath. Only `vigil torture` selects it,
//! through the environment variable [`FAIL_AFTER_ENV`] of the `vigil run`
//! it starts, to prove that vigil then stops with a clear error (exit
//! status 4) without committing input offsets past what its state holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Cf, RetentionHorizon, StateBatch, StateError, Store};

/// The environment variable holding the number of batches written before
/// the store fails (`vigil torture` sets it; nothing else reads it).
pub const FAIL_AFTER_ENV: &str = "VIGIL_TORTURE_STORE_FAIL_AFTER";

/// The message of an injected failure, as RocksDB words a full disk.
pub const INJECTED: &str = "IO error: No space left on device (injected by vigil torture)";

pub struct FailingStore {
    inner: Arc<dyn Store>,
    path: String,
    /// Batches that may still be written.
    left: AtomicU64,
}

impl FailingStore {
    /// `inner`, failing every write after the first `writes` batches.
    pub fn new(inner: Arc<dyn Store>, path: &str, writes: u64) -> Self {
        FailingStore {
            inner,
            path: path.to_string(),
            left: AtomicU64::new(writes),
        }
    }

    /// `inner`, wrapped when [`FAIL_AFTER_ENV`] holds a number; an
    /// unreadable value is an error that names the variable.
    pub fn from_env(inner: Arc<dyn Store>, path: &str) -> Result<Arc<dyn Store>, StateError> {
        let Ok(text) = std::env::var(FAIL_AFTER_ENV) else {
            return Ok(inner);
        };
        let writes = text.trim().parse::<u64>().map_err(|_| StateError::Rocks {
            path: path.to_string(),
            message: format!("{FAIL_AFTER_ENV}={text:?} is not a number of writes"),
        })?;
        tracing::warn!(
            writes,
            "{FAIL_AFTER_ENV} is set: the state store fails after {writes} writes"
        );
        Ok(Arc::new(FailingStore::new(inner, path, writes)))
    }
}

impl Store for FailingStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.get(cf, key)
    }

    fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        let allowed = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if !allowed {
            return Err(StateError::Rocks {
                path: self.path.clone(),
                message: INJECTED.to_string(),
            });
        }
        self.inner.write(batch)
    }

    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.inner.scan(cf, prefix, f)
    }

    fn scan_range(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.inner.scan_range(cf, from, to, f)
    }

    fn last_in(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.last_in(cf, from, to)
    }

    fn delete_scope(&self, scope: i32) -> Result<(), StateError> {
        self.inner.delete_scope(scope)
    }

    fn retention(&self) -> &RetentionHorizon {
        self.inner.retention()
    }

    fn sweep(&self) -> Result<(), StateError> {
        self.inner.sweep()
    }

    fn approximate_len(&self, cf: Cf) -> u64 {
        self.inner.approximate_len(cf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemStore;

    fn batch(key: &[u8]) -> StateBatch {
        let mut b = StateBatch::default();
        b.put(Cf::Keys, 0, key.to_vec(), b"v".to_vec());
        b
    }

    #[test]
    fn writes_fail_after_the_allowed_batches_and_leave_nothing_behind() {
        let inner: Arc<dyn Store> = Arc::new(MemStore::new());
        let store = FailingStore::new(Arc::clone(&inner), "/state", 2);
        store.write(batch(b"a")).unwrap();
        store.write(batch(b"b")).unwrap();
        for key in [b"c", b"d"] {
            let err = store.write(batch(key)).unwrap_err().to_string();
            assert!(err.contains("No space left on device"), "{err}");
            assert!(err.contains("/state"), "{err}");
            assert_eq!(inner.get(Cf::Keys, key).unwrap(), None);
        }
        assert_eq!(store.get(Cf::Keys, b"b").unwrap(), Some(b"v".to_vec()));
    }
}
