//! Sets of 64-bit keys (keyed hashes of paths, the first bytes of blob ids) in about 9 bytes a
//! key: what the passes that remember every entry or blob of an image hold (the manifest
//! reader's checks, verify, the streamed delta precomputation).
//!
//! A hash set of `u64` costs 9 bytes a slot at a load of at most 7/8, so between 10 and 21
//! bytes a key, and 30 while it grows (the old table and the new one twice its size): 28 MiB
//! at the peak for a million paths, which was a quarter of a million-entry capture's memory
//! (issue #14). Here most keys lie in one sorted vector (8 bytes a key; a lookup is a binary
//! search), and the newest in a small hash set that is sorted and merged into the vector, in
//! place from its end, each time it reaches an eighth of the vector's length: each key is
//! moved a few times in all, and nothing holds two copies of the keys.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

/// A set of 64-bit keys that are uniform already (hashes): see the module doc.
#[derive(Default)]
pub struct KeySet {
    sorted: Vec<u64>,
    recent: HashSet<u64, BuildHasherDefault<Uniform>>,
}

/// Keys the recent set holds at least before it is merged.
const MIN_RECENT: usize = 1 << 14;

impl KeySet {
    /// Adds `key`; whether it was new.
    pub fn insert(&mut self, key: u64) -> bool {
        if self.sorted.binary_search(&key).is_ok() || !self.recent.insert(key) {
            return false;
        }
        if self.recent.len() >= (self.sorted.len() / 8).max(MIN_RECENT) {
            self.merge();
        }
        true
    }

    pub fn contains(&self, key: u64) -> bool {
        self.recent.contains(&key) || self.sorted.binary_search(&key).is_ok()
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the recent keys into the sorted vector: sorted, then merged from the end.
    fn merge(&mut self) {
        let mut new: Vec<u64> = self.recent.drain().collect();
        new.sort_unstable();
        let old = self.sorted.len();
        self.sorted.resize(old + new.len(), 0);
        let (mut i, mut j) = (old, new.len());
        while j > 0 {
            let to = i + j - 1;
            if i > 0 && self.sorted[i - 1] > new[j - 1] {
                self.sorted[to] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[to] = new[j - 1];
                j -= 1;
            }
        }
    }
}

/// The hasher of keys that are uniform hashes already: the key itself.
#[derive(Default)]
pub struct Uniform(u64);

impl std::hash::Hasher for Uniform {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a hash set, across many merges, keys in any order and repeated.
    #[test]
    fn holds_what_a_hash_set_holds() {
        let mut set = KeySet::default();
        let mut all = HashSet::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..300_000u64 {
            // A key seen before now and then, else a new pseudo-random one.
            let key = if n % 7 == 0 { n / 2 } else { x };
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            assert_eq!(set.insert(key), all.insert(key), "key {key} at {n}");
        }
        assert_eq!(set.len(), all.len());
        assert!(set.sorted.windows(2).all(|w| w[0] < w[1]));
        for k in &all {
            assert!(set.contains(*k));
        }
        assert!(!set.contains(x));
    }
}
