//! Counting in fixed memory, whatever the number of distinct keys: a
//! Count-Min sketch, and the heaviest keys of a stream on top of it.

use xxhash_rust::xxh3::xxh3_128;

use crate::hash::Digest;

/// Longest key text kept for display (counting uses the whole key's hash).
pub const MAX_NAME_BYTES: usize = 256;

/// A Count-Min sketch: `depth` rows of `width` counters; an estimate is
/// never below the true count and exceeds it by at most about
/// `2 / width` of the total with probability `1 - 2^-depth`.
#[derive(Debug, Clone)]
pub struct CountMin {
    width: usize,
    depth: usize,
    cells: Vec<u32>,
}

/// Two 64-bit hashes of a key, combined per row (double hashing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub u64, pub u64);

impl KeyHash {
    fn from_128(h: u128) -> Self {
        KeyHash(h as u64, (h >> 64) as u64 | 1)
    }

    pub fn of(key: &[u8]) -> Self {
        Self::from_128(xxh3_128(key))
    }

    /// The hash of the pair `a \0 b`, without allocating it.
    pub fn of_pair(a: &str, b: &str) -> Self {
        let mut pair = Digest::default();
        pair.update(a.as_bytes());
        pair.update(&[0]);
        pair.update(b.as_bytes());
        Self::from_128(pair.digest128())
    }

    /// A 64-bit identity of the key.
    pub fn id(self) -> u64 {
        self.0
    }
}

impl CountMin {
    pub fn new(width: usize, depth: usize) -> Self {
        CountMin {
            width,
            depth,
            cells: vec![0; width * depth],
        }
    }

    fn index(&self, h: KeyHash, row: usize) -> usize {
        let x = h.0.wrapping_add((row as u64).wrapping_mul(h.1));
        let width = self.width as u64;
        // The same column as `x % width`, without a division when it can.
        let column = if width.is_power_of_two() {
            x & (width - 1)
        } else {
            x % width
        };
        row * self.width + column as usize
    }

    /// Adds `n` to a key and returns its new estimate.
    pub fn add(&mut self, h: KeyHash, n: u32) -> u32 {
        let mut est = u32::MAX;
        for row in 0..self.depth {
            let i = self.index(h, row);
            self.cells[i] = self.cells[i].saturating_add(n);
            est = est.min(self.cells[i]);
        }
        est
    }

    pub fn estimate(&self, h: KeyHash) -> u32 {
        (0..self.depth)
            .map(|row| self.cells[self.index(h, row)])
            .min()
            .unwrap_or(0)
    }

    /// Sets every counter back to 0, keeping the buffer.
    pub fn clear(&mut self) {
        self.cells.fill(0);
    }

    pub fn memory_bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<u32>()
    }
}

/// A key and its (estimated) count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub id: u64,
    pub name: Box<str>,
    pub count: u64,
}

/// The `k` heaviest keys of a stream: every key is counted in a Count-Min
/// sketch; a key enters the top when its estimate beats the smallest there.
/// Only keys that may enter are compared, so a stream of millions of
/// distinct keys costs one sketch update per key.
#[derive(Debug, Clone)]
pub struct HeavyHitters {
    sketch: CountMin,
    k: usize,
    top: Vec<Counted>,
    /// Smallest count in `top` once it is full.
    min: u64,
}

/// A key's display name, cut at [`MAX_NAME_BYTES`] on a character boundary.
pub fn display_name(key: &str) -> Box<str> {
    if key.len() <= MAX_NAME_BYTES {
        return Box::from(key);
    }
    let mut end = MAX_NAME_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    Box::from(&key[..end])
}

impl HeavyHitters {
    pub fn new(k: usize, width: usize) -> Self {
        HeavyHitters {
            sketch: CountMin::new(width, 4),
            k,
            top: Vec::with_capacity(k),
            min: 0,
        }
    }

    pub fn add(&mut self, key: &str, n: u64) {
        self.add_hashed(KeyHash::of(key.as_bytes()), || display_name(key), n);
    }

    /// Counts the pair `a \0 b` (named only if it enters the top).
    pub fn add_pair(&mut self, a: &str, b: &str, n: u64) {
        self.add_hashed(
            KeyHash::of_pair(a, b),
            || display_name(&format!("{a}\0{b}")),
            n,
        );
    }

    /// Counts a key by its hash; `name` is called only if it enters the top.
    pub fn add_hashed(&mut self, h: KeyHash, name: impl FnOnce() -> Box<str>, n: u64) {
        let est = u64::from(self.sketch.add(h, u32::try_from(n).unwrap_or(u32::MAX)));
        let full = self.top.len() == self.k;
        // A key already in the top has an estimate above the minimum, so a
        // key at or below it needs no search.
        if full && est <= self.min {
            return;
        }
        if let Some(entry) = self.top.iter_mut().find(|e| e.id == h.id()) {
            entry.count = est;
        } else if !full {
            self.top.push(Counted {
                id: h.id(),
                name: name(),
                count: est,
            });
        } else if let Some(smallest) = self.top.iter_mut().min_by_key(|e| e.count) {
            *smallest = Counted {
                id: h.id(),
                name: name(),
                count: est,
            };
        }
        if self.top.len() == self.k {
            self.min = self.top.iter().map(|e| e.count).min().unwrap_or(0);
        }
    }

    /// The estimated count of a key.
    pub fn estimate(&self, h: KeyHash) -> u64 {
        u64::from(self.sketch.estimate(h))
    }

    /// Forgets every key, keeping the buffers: as new, without allocating.
    pub fn clear(&mut self) {
        self.sketch.clear();
        self.top.clear();
        self.min = 0;
    }

    /// The heaviest keys, heaviest first (ties by name).
    pub fn top(&self) -> Vec<Counted> {
        let mut top = self.top.clone();
        top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        top
    }

    pub fn memory_bytes(&self) -> usize {
        self.sketch.memory_bytes() + self.k * (std::mem::size_of::<Counted>() + MAX_NAME_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_min_never_underestimates() {
        let mut cms = CountMin::new(64, 4);
        let keys: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            cms.add(KeyHash::of(k.as_bytes()), (i % 7) as u32 + 1);
        }
        for (i, k) in keys.iter().enumerate() {
            assert!(cms.estimate(KeyHash::of(k.as_bytes())) > (i % 7) as u32);
        }
    }

    #[test]
    fn heavy_hitters_find_the_heavy_keys_among_many_distinct_ones() {
        let mut hh = HeavyHitters::new(8, 1024);
        for i in 0..100_000u64 {
            hh.add(&format!("noise:{i}"), 1);
            if i % 10 == 0 {
                hh.add("hot:a", 1);
            }
            if i % 25 == 0 {
                hh.add("hot:b", 1);
            }
        }
        let top = hh.top();
        assert_eq!(&*top[0].name, "hot:a");
        assert!(top[0].count >= 10_000);
        assert_eq!(&*top[1].name, "hot:b");
        assert!(top[1].count >= 4_000);
        assert!(top.len() <= 8);
    }

    #[test]
    fn a_pair_hashes_as_its_joined_text() {
        for (a, b) in [
            ("user", "users-api"),
            ("", ""),
            (&*"k".repeat(200), &*"s".repeat(55)),
            (&*"k".repeat(200), &*"s".repeat(56)),
            (&*"k".repeat(300), "users-api"),
        ] {
            assert_eq!(
                KeyHash::of_pair(a, b),
                KeyHash::of(format!("{a}\0{b}").as_bytes()),
                "{} + {} bytes",
                a.len(),
                b.len()
            );
        }
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let long = "é".repeat(200);
        let name = display_name(&long);
        assert!(name.len() <= MAX_NAME_BYTES);
        assert!(long.starts_with(&*name));
    }
}
