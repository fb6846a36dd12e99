//! Stable hashes: identities of entities, changes and fills, shard choice, and
//! the deterministic ids of output events. XXH3 is specified and portable, so
//! the same input gives the same id on every machine and release; changing
//! any function here changes ids, which consumers use to deduplicate.

use xxhash_rust::xxh3::{Xxh3, xxh3_64, xxh3_128};

use crate::model::{Millis, Op, Version};

/// Bytes hashed at once from a buffer on the stack, up to this many.
const INLINE_BYTES: usize = 256;

/// XXH3 of bytes given in parts. The parts are gathered on the stack and
/// hashed at once, which gives the same digest as XXH3's streaming state
/// but skips setting that state up (it copies a 192-byte secret and keeps a
/// 256-byte buffer): most of the cost of hashing the few short fields of an
/// id. Longer inputs stream.
pub struct Digest {
    buf: [u8; INLINE_BYTES],
    len: usize,
    stream: Option<Box<Xxh3>>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            buf: [0; INLINE_BYTES],
            len: 0,
            stream: None,
        }
    }
}

impl Digest {
    /// Starts over, as a new digest (the buffer is reused, not zeroed).
    pub fn reset(&mut self) {
        self.len = 0;
        self.stream = None;
    }

    /// Adds bytes. Inlined: the parts of ids are mostly a few bytes, often
    /// of a length known here (the 8 of an integer), copied with a word or
    /// two rather than a call to `memcpy`.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.buf.get_mut(self.len..end) {
            Some(room) if self.stream.is_none() => {
                copy_short(room, bytes);
                self.len = end;
            }
            _ => self.update_streaming(bytes),
        }
    }

    /// Adds bytes once they no longer fit the buffer.
    #[cold]
    #[inline(never)]
    fn update_streaming(&mut self, bytes: &[u8]) {
        let buf = &self.buf[..self.len];
        self.stream
            .get_or_insert_with(|| {
                let mut stream = Box::new(Xxh3::new());
                stream.update(buf);
                stream
            })
            .update(bytes);
    }

    pub fn digest(&self) -> u64 {
        match &self.stream {
            Some(stream) => stream.digest(),
            None => xxh3_64(&self.buf[..self.len]),
        }
    }

    pub fn digest128(&self) -> u128 {
        match &self.stream {
            Some(stream) => stream.digest128(),
            None => xxh3_128(&self.buf[..self.len]),
        }
    }
}

/// Copies `src` to `dst`, of the same length: up to 32 bytes with two
/// overlapping copies of a fixed size (a load and a store each), longer
/// ones with `copy_from_slice`.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    debug_assert_eq!(dst.len(), n);
    if n > 32 {
        dst.copy_from_slice(src);
    } else if n >= 16 {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else if n > 0 {
        dst[0] = src[0];
        dst[n / 2] = src[n / 2];
        dst[n - 1] = src[n - 1];
    }
}

/// Feeds length-prefixed fields, so that ("ab","c") and ("a","bc") differ.
struct Fields(Digest);

impl Fields {
    fn new(domain: &str) -> Self {
        let mut f = Fields(Digest::default());
        f.bytes(domain.as_bytes());
        f
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_le_bytes());
        self
    }

    fn version(&mut self, v: Option<Version>) -> &mut Self {
        match v {
            Some(v) => self.u64(1).u64(v.major).u64(v.minor),
            None => self.u64(0),
        }
    }
}

/// Identity of an entity: table and primary key (compact JSON).
pub fn entity(table: &str, pk: &str) -> u64 {
    Fields::new("entity")
        .bytes(table.as_bytes())
        .bytes(pk.as_bytes())
        .0
        .digest()
}

/// Identity of a change record: entity, op, version, commit time and row. A
/// redelivery of the record, however late, has the same id; a row deleted
/// and created again with the same data is a new change (a new commit time).
pub fn change(
    entity: u64,
    op: Op,
    version: Option<Version>,
    commit_ts_ms: Millis,
    row_hash: u64,
) -> u64 {
    Fields::new("change")
        .u64(entity)
        .bytes(op.code().as_bytes())
        .version(version)
        .u64(commit_ts_ms as u64)
        .u64(row_hash)
        .0
        .digest()
}

/// Identity of a cache fill.
pub fn fill(key: &str, ts_ms: Millis, version: Option<u64>, source_service: Option<&str>) -> u64 {
    let mut f = Fields::new("fill");
    f.bytes(key.as_bytes())
        .u64(ts_ms as u64)
        .version(version.map(Version::scalar));
    f.bytes(source_service.unwrap_or_default().as_bytes());
    f.0.digest()
}

/// Identity of a transaction's verdict about one of its tables (`""` for
/// the transaction as a whole).
pub fn transaction(id: &str, table: &str) -> u64 {
    Fields::new("transaction")
        .bytes(id.as_bytes())
        .bytes(table.as_bytes())
        .0
        .digest()
}

/// Identity of a transaction's summary of its changes' invalidations.
pub fn transaction_summary(id: &str) -> u64 {
    Fields::new("transaction_summary")
        .bytes(id.as_bytes())
        .0
        .digest()
}

/// Identity of a storm report: when the storm started and the report's time.
pub fn storm(start_ms: Millis, time_ms: Millis) -> u64 {
    Fields::new("storm")
        .u64(start_ms as u64)
        .u64(time_ms as u64)
        .0
        .digest()
}

/// The shard of a cache key or entity among `n` workers.
pub fn shard_of_key(key: &str, n: usize) -> usize {
    (xxh3_64(key.as_bytes()) % n as u64) as usize
}

/// Which of `n` parts of a worker's map holds a key (by the top bits of its
/// hash: the low ones chose the worker).
pub fn part_of(key: &[u8], n: usize) -> usize {
    ((xxh3_64(key) >> 32) % n as u64) as usize
}

/// The shard of an entity among `n` workers.
pub fn shard_of_entity(entity: u64, n: usize) -> usize {
    // Entity ids are already uniform hashes.
    (entity % n as u64) as usize
}

/// The deterministic id of an output event: kind, subject key (or none) and
/// the identity of what it is about, as 32 hex digits.
pub fn event_id(kind: &str, key: Option<&str>, about: u64) -> String {
    let mut f = Fields::new("event");
    f.bytes(kind.as_bytes())
        .bytes(key.unwrap_or_default().as_bytes())
        .u64(about);
    format!("{:032x}", f.0.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_separate_their_fields() {
        assert_eq!(
            entity("public.users", "{\"id\":1}"),
            entity("public.users", "{\"id\":1}")
        );
        assert_ne!(entity("ab", "c"), entity("a", "bc"));
        let e = entity("t", "{}");
        let v = Some(Version::scalar(3));
        assert_ne!(
            change(e, Op::Update, v, 10, 1),
            change(e, Op::Delete, v, 10, 1)
        );
        assert_ne!(
            change(e, Op::Update, v, 10, 1),
            change(e, Op::Update, None, 10, 1)
        );
        assert_ne!(
            change(e, Op::Update, v, 10, 1),
            change(e, Op::Update, v, 10, 2)
        );
        assert_ne!(
            change(e, Op::Create, v, 10, 1),
            change(e, Op::Create, v, 99, 1)
        );
        let id = event_id("stale_fill", Some("k"), 7);
        assert_eq!(id.len(), 32);
        assert_eq!(id, event_id("stale_fill", Some("k"), 7));
        assert_ne!(id, event_id("stale_fill", None, 7));
        assert_ne!(
            fill("k", 1, Some(2), None),
            fill("k", 1, Some(2), Some("svc"))
        );
    }

    #[test]
    fn ids_are_pinned_across_releases() {
        // Consumers deduplicate on ids they have stored: a change to any of
        // these values breaks them, and must be a deliberate, announced one.
        let e = entity("public.users", "{\"id\":1}");
        assert_eq!(e, 3_722_610_745_683_150_574);
        let c = change(
            e,
            Op::Update,
            Some(Version::scalar(3)),
            1_700_000_000_000,
            42,
        );
        assert_eq!(c, 10_171_527_904_676_127_631);
        assert_eq!(
            fill("user:1", 1_700_000_000_000, Some(2), Some("svc")),
            7_496_968_496_561_146_096
        );
        assert_eq!(
            event_id("missing_invalidation", Some("user:1"), c),
            "2086fe0ae61e026b3cc58c8952880fc1"
        );
    }

    #[test]
    fn ids_of_every_kind_and_length_are_pinned() {
        // As above, for every id function, with fields long enough to
        // stream and without the optional parts.
        let long = format!("{{\"id\":\"{}\"}}", "k".repeat(300));
        let e = entity("public.t1", "{\"id\":1,\"region\":\"eu\"}");
        let ids = [
            e,
            entity("public.t0", "{\"id\":19999}"),
            entity("public.t0", &long),
            entity("", ""),
            change(e, Op::Create, None, 0, 0),
            change(e, Op::Delete, Some(Version::new(u64::MAX, 7)), -5, u64::MAX),
            change(e, Op::Truncate, Some(Version::scalar(1)), 1, 2),
            fill("user:1", 5, None, None),
            fill(&long, 5, Some(1), Some(&long)),
            transaction("604", "public.t0"),
            transaction_summary("604"),
            storm(1_700_000_000_000, 1_700_000_001_000),
        ];
        assert_eq!(
            ids,
            [
                8_825_156_219_326_125_375,
                9_316_562_515_607_133_286,
                11_472_242_336_762_300_829,
                4_690_945_378_595_828_187,
                13_191_554_180_946_726_830,
                6_916_832_450_018_805_257,
                11_481_948_228_250_530_164,
                7_267_039_963_767_284_153,
                9_005_533_628_284_293_158,
                17_059_819_327_196_449_790,
                15_340_533_201_397_167_340,
                8_352_418_290_671_949_034,
            ]
        );
        assert_eq!(
            [
                event_id("stale_fill", None, e),
                event_id("stale_fill", Some(&long), e)
            ],
            [
                "6da21e254e6d1771e80dc0a24b9f8882",
                "9bed64077c844ef13da9c35059ba42c8"
            ]
        );
    }

    #[test]
    fn a_digest_gathered_on_the_stack_is_the_streaming_one() {
        for len in [
            0,
            1,
            100,
            INLINE_BYTES - 1,
            INLINE_BYTES,
            INLINE_BYTES + 1,
            1000,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            for cut in [0, len / 3, len] {
                let mut gathered = Digest::default();
                gathered.update(&[7; 300]);
                gathered.reset();
                gathered.update(&bytes[..cut]);
                gathered.update(&bytes[cut..]);
                let mut streamed = Xxh3::new();
                streamed.update(&bytes);
                assert_eq!(gathered.digest(), streamed.digest(), "{len} bytes");
                assert_eq!(gathered.digest128(), streamed.digest128(), "{len} bytes");
            }
        }
    }

    #[test]
    fn pieces_of_every_short_length_are_copied_whole() {
        let bytes: Vec<u8> = (1..=80).collect();
        let mut gathered = Digest::default();
        for n in 0..=40 {
            // After an odd number of bytes, then at the start.
            for at in [3, 0] {
                gathered.reset();
                gathered.update(&bytes[..at]);
                gathered.update(&bytes[at..at + n]);
                gathered.update(&[0xff]);
                let mut whole = bytes[..at + n].to_vec();
                whole.push(0xff);
                assert_eq!(gathered.digest(), xxh3_64(&whole), "{n} bytes at {at}");
            }
        }
    }

    #[test]
    fn shards_are_in_range() {
        for n in 1..5 {
            for k in ["a", "user:1", ""] {
                assert!(shard_of_key(k, n) < n);
            }
            assert!(shard_of_entity(u64::MAX, n) < n);
        }
    }
}
