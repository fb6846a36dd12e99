//! The RocksDB store and the in-memory store agree on every sequence of
//! operations, and retention removes expired entries from RocksDB.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Action {
    Batch(Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>),
    Get(Cf, Vec<u8>),
    Scan(Cf, Vec<u8>),
}

fn cf() -> impl Strategy<Value = Cf> {
    prop::sample::select(Cf::ALL.to_vec())
}

/// Short keys from a small alphabet, so that batches overwrite, delete and
/// prefix-match each other often.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xff]), 0..4)
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => prop::collection::vec((cf(), key(), prop::option::of(prop::collection::vec(any::<u8>(), 0..6))), 0..8)
            .prop_map(Action::Batch),
        2 => (cf(), key()).prop_map(|(c, k)| Action::Get(c, k)),
        1 => (cf(), key()).prop_map(|(c, k)| Action::Scan(c, k)),
    ]
}

fn scan_all(store: &dyn Store, cf: Cf, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan(cf, prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
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
                            Some(v) => batch.put(c, k, v),
                            None => batch.delete(c, k),
                        }
                    }
                    rocks.write(batch.clone()).unwrap();
                    mem.write(batch).unwrap();
                }
                Action::Get(c, k) => prop_assert_eq!(rocks.get(c, &k).unwrap(), mem.get(c, &k).unwrap()),
                Action::Scan(c, p) => prop_assert_eq!(scan_all(&rocks, c, &p), scan_all(&mem, c, &p)),
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
            codec::offset_key("t", 0),
            42i64.to_le_bytes().to_vec(),
        );
        batch.put(Cf::Keys, b"user:1".to_vec(), codec::encode(5, &1u32));
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
fn retention_removes_only_expired_entries_of_expiring_families() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path()).unwrap();
    let mut batch = StateBatch::default();
    batch.put(Cf::Keys, b"old".to_vec(), codec::encode(1_000, &0u8));
    batch.put(Cf::Keys, b"new".to_vec(), codec::encode(9_000, &0u8));
    batch.put(
        Cf::Entities,
        b"old-entity".to_vec(),
        codec::encode(1_000, &0u8),
    );
    batch.put(Cf::Timers, codec::timer_key(1_000, "old"), Vec::new());
    store.write(batch).unwrap();
    store.retention().advance(5_000);
    for cf in Cf::ALL {
        store.compact(cf);
    }
    assert_eq!(store.get(Cf::Keys, b"old").unwrap(), None);
    assert!(store.get(Cf::Keys, b"new").unwrap().is_some());
    assert_eq!(store.get(Cf::Entities, b"old-entity").unwrap(), None);
    assert!(
        store
            .get(Cf::Timers, &codec::timer_key(1_000, "old"))
            .unwrap()
            .is_some()
    );
}
