//! The RocksDB store and the in-memory store agree on every sequence of
//! operations, and a sweep removes expired entries from both.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Action {
    Batch(Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>),
    Get(Cf, Vec<u8>),
    Scan(Cf, Vec<u8>),
    Range(Cf, Vec<u8>, Vec<u8>),
    DeleteScope(i32),
}

fn cf() -> impl Strategy<Value = Cf> {
    prop::sample::select(Cf::ALL.to_vec())
}

/// Short keys from a small alphabet, so that batches overwrite, delete and
/// prefix-match each other often, and that some fall in the scopes the
/// actions delete.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xff]), 0..7)
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => prop::collection::vec((cf(), key(), prop::option::of(prop::collection::vec(any::<u8>(), 0..6))), 0..8)
            .prop_map(Action::Batch),
        2 => (cf(), key()).prop_map(|(c, k)| Action::Get(c, k)),
        1 => (cf(), key()).prop_map(|(c, k)| Action::Scan(c, k)),
        1 => (cf(), key(), key()).prop_map(|(c, from, to)| Action::Range(c, from, to)),
        1 => prop::sample::select(vec![0i32, 1, 0x6162]).prop_map(Action::DeleteScope),
    ]
}

/// The entries of `[from, to)`, and its last key as [`Store::last_in`]
/// finds it, which must be the last of them.
fn range(store: &dyn Store, cf: Cf, from: &[u8], to: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan_range(cf, from, to, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    assert_eq!(
        store.last_in(cf, from, to).unwrap(),
        out.last().map(|(k, _)| k.clone())
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn rocks_and_memory_stores_agree(actions in prop::collection::vec(action(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(dir.path()).unwrap();
        let mem = MemStore::new();
        for a in actions {
            match a {
                Action::Batch(writes) => {
                    let mut batch = StateBatch::default();
                    for (c, k, v) in writes {
                        match v {
                            Some(v) => batch.put(c, 0, k, v),
                            None => batch.delete(c, 0, k),
                        }
                    }
                    rocks.write(batch.clone()).unwrap();
                    mem.write(batch).unwrap();
                }
                Action::Get(c, k) => prop_assert_eq!(rocks.get(c, &k).unwrap(), mem.get(c, &k).unwrap()),
                Action::Scan(c, p) => prop_assert_eq!(scan_all(&rocks, c, &p), scan_all(&mem, c, &p)),
                Action::Range(c, from, to) => {
                    prop_assert_eq!(range(&rocks, c, &from, &to), range(&mem, c, &from, &to));
                }
                Action::DeleteScope(scope) => {
                    rocks.delete_scope(scope).unwrap();
                    mem.delete_scope(scope).unwrap();
                }
            }
        }
        for c in Cf::ALL {
            prop_assert_eq!(scan_all(&rocks, c, &[]), scan_all(&mem, c, &[]));
        }
    }
}

#[test]
fn reopening_keeps_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        let mut batch = StateBatch::default();
        batch.put(
            Cf::Offsets,
            0,
            codec::offset_key("t", 0),
            42i64.to_le_bytes().to_vec(),
        );
        batch.put(Cf::Keys, 0, b"user:1".to_vec(), codec::encode(5, &1u32));
        store.write(batch).unwrap();
    }
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get(Cf::Offsets, &codec::offset_key("t", 0)).unwrap(),
        Some(42i64.to_le_bytes().to_vec())
    );
    let (touched, v): (i64, u32) =
        codec::decode(Cf::Keys, &store.get(Cf::Keys, b"user:1").unwrap().unwrap()).unwrap();
    assert_eq!((touched, v), (5, 1));
}

#[test]
fn a_sweep_removes_only_expired_entries_of_expiring_families_in_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [Box<dyn Store>; 2] = [
        Box::new(RocksStore::open(dir.path()).unwrap()),
        Box::new(MemStore::new()),
    ];
    for store in stores {
        let mut batch = StateBatch::default();
        batch.put(Cf::Keys, 0, b"old".to_vec(), codec::encode(1_000, &0u8));
        batch.put(Cf::Keys, 0, b"new".to_vec(), codec::encode(9_000, &0u8));
        batch.put(
            Cf::Entities,
            0,
            b"old-entity".to_vec(),
            codec::encode(1_000, &0u8),
        );
        batch.put(Cf::Timers, 0, codec::timer_key(0, 1_000, "old"), Vec::new());
        batch.put(
            Cf::Wildcards,
            0,
            b"old-glob".to_vec(),
            codec::encode(1_000, &0u8),
        );
        store.write(batch).unwrap();
        store.retention().advance(5_000);
        store.sweep().unwrap();
        assert_eq!(store.get(Cf::Keys, b"old").unwrap(), None);
        assert!(store.get(Cf::Keys, b"new").unwrap().is_some());
        assert_eq!(store.get(Cf::Entities, b"old-entity").unwrap(), None);
        assert!(
            store
                .get(Cf::Timers, &codec::timer_key(0, 1_000, "old"))
                .unwrap()
                .is_some()
        );
        assert!(store.get(Cf::Wildcards, b"old-glob").unwrap().is_some());
    }
}

#[test]
fn deleting_a_scope_leaves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path()).unwrap();
    let mut batch = StateBatch::default();
    for scope in [1, 2] {
        batch.put(
            Cf::Keys,
            scope,
            codec::scoped(scope, b"user:1"),
            codec::encode(1, &0u8),
        );
        batch.put(
            Cf::Timers,
            scope,
            codec::timer_key(scope, 5, "user:1"),
            Vec::new(),
        );
        batch.put(
            Cf::Offsets,
            scope,
            codec::offset_key("cache", scope),
            9i64.to_le_bytes().to_vec(),
        );
    }
    store.write(batch).unwrap();
    store.delete_scope(1).unwrap();
    for cf in Cf::ALL {
        let left = scan_all(&store, cf, &[]);
        assert!(left.len() <= 1, "{cf:?}: {left:?}");
    }
    assert!(
        store
            .get(Cf::Keys, &codec::scoped(2, b"user:1"))
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get(Cf::Offsets, &codec::offset_key("cache", 2))
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get(Cf::Offsets, &codec::offset_key("cache", 1))
            .unwrap()
            .is_none()
    );
}

/// Bytes of the write-ahead log files in a store's directory.
fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn a_scratch_store_is_created_at_its_first_key_and_logs_nothing_and_a_kept_one_logs_until_closed() {
    let write = |store: &dyn Store| {
        let mut batch = StateBatch::default();
        batch.put(Cf::Keys, 0, b"key".to_vec(), vec![7; 100]);
        store.write(batch).unwrap();
        assert_eq!(store.get(Cf::Keys, b"key").unwrap(), Some(vec![7; 100]));
    };
    let memory = MemoryBudget::of(64 << 20);
    let kept = tempfile::tempdir().unwrap();
    let store = RocksStore::open_with(kept.path(), memory).unwrap();
    write(&store);
    assert!(wal_bytes(kept.path()) > 100, "a kept store logs its writes");
    drop(store);
    assert_eq!(
        wal_bytes(kept.path()),
        0,
        "a clean close flushes the memtables: nothing is left to replay"
    );
    let reopened = RocksStore::open_with(kept.path(), memory).unwrap();
    assert_eq!(reopened.get(Cf::Keys, b"key").unwrap(), Some(vec![7; 100]));
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("scratch");
    let store = ScratchStore::new(dir.clone(), memory);
    let mut nothing_to_keep = StateBatch::default();
    nothing_to_keep.put(Cf::Offsets, 0, codec::offset_key("cdc", 0), vec![1]);
    nothing_to_keep.put(Cf::Storms, 0, b"storms".to_vec(), vec![2]);
    store.write(nothing_to_keep).unwrap();
    assert!(!dir.exists(), "a scratch store is created at its first key");
    assert_eq!(store.get(Cf::Keys, b"key").unwrap(), None);
    write(&store);
    assert!(dir.exists());
    assert_eq!(wal_bytes(&dir), 0, "a scratch store does not log");
    assert_eq!(
        store
            .get(Cf::Offsets, &codec::offset_key("cdc", 0))
            .unwrap(),
        None,
        "nothing resumes from a scratch store: it keeps no input positions"
    );
}
