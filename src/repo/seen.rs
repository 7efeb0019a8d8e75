//! Sets of blob ids kept as the first 8 bytes of each id, for the passes that look at every
//! blob of a revision once (verify, the streamed delta precomputation).
//!
//! Ids are hashes: 8 bytes tell a million blobs apart but for odds of one in 10^7, and cost
//! about 9 bytes each in a [`KeySet`] where the ids in a hash set would cost 40 to 80. A
//! collision only makes a pass skip a blob it takes for one already seen, so these sets serve
//! where that costs work, never correctness of what is stored: verify re-reads every pack's
//! blobs anyway, and a delta not precomputed is made on request.

use crate::format::Id;
use crate::keyset::KeySet;

/// Blobs already looked at, by the first 8 bytes of their id.
#[derive(Default)]
pub struct IdHeads(KeySet);

impl IdHeads {
    /// Whether `id` is new (and notes it).
    pub fn first(&mut self, id: &Id) -> bool {
        let mut head = [0u8; 8];
        head.copy_from_slice(&id.0[..8]);
        self.0.insert(u64::from_le_bytes(head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_new_once() {
        let mut seen = IdHeads::default();
        let (a, b) = (Id::of(b"a"), Id::of(b"b"));
        assert!(seen.first(&a));
        assert!(seen.first(&b));
        assert!(!seen.first(&a));
    }
}
