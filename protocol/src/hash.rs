//! Chunk hashing (xxh3-64), zero detection, the hash-scan change detector's pure core, and the
//! per-generation summary hash (spec/PROTOCOL.md §6).

use crate::dirty::DirtySet;
use crate::geometry::Geometry;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Hash of one chunk's bytes.
pub fn chunk_hash(data: &[u8]) -> u64 {
    xxh3_64(data)
}

/// True when every byte is zero.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for b in &mut blocks {
        let mut acc = 0u64;
        for w in b.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().expect("8-byte slice"));
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Hashes of all-zero chunks for one geometry: the full-chunk hash and the last chunk's, so a
/// chunk whose hash matches can be checked for zeros without hashing zeros again.
#[derive(Clone, Copy, Debug)]
pub struct ZeroHashes {
    full: u64,
    last: u64,
    last_index: u64,
}

impl ZeroHashes {
    /// Computes the zero-chunk hashes for `geom`.
    pub fn new(geom: &Geometry) -> Self {
        let last_index = geom.chunk_count() - 1;
        let zeros = vec![0u8; geom.chunk_size() as usize];
        ZeroHashes {
            full: chunk_hash(&zeros),
            last: chunk_hash(&zeros[..geom.chunk_len(last_index)]),
            last_index,
        }
    }

    /// Hash of chunk `index` if it were all zeros.
    pub fn of(&self, index: u64) -> u64 {
        if index == self.last_index {
            self.last
        } else {
            self.full
        }
    }
}

/// Hashes every chunk of `region` (which must be `geom.size()` bytes) into `out[..]`, indexed by
/// chunk. `first` is the index of the first chunk in `region`, so callers can split the work.
pub fn hash_chunks(geom: &Geometry, first: u64, region: &[u8], out: &mut [u64]) {
    let cs = geom.chunk_size() as usize;
    for (i, (chunk, h)) in region.chunks(cs).zip(out.iter_mut()).enumerate() {
        debug_assert_eq!(chunk.len(), geom.chunk_len(first + i as u64));
        *h = chunk_hash(chunk);
    }
}

/// The hash detector's core: compares each chunk of `region` with `known` (the hash of what the
/// replica was last sent) and returns the chunks that differ. `region` holds chunks
/// `first..first + known.len()`.
pub fn scan_changes(geom: &Geometry, first: u64, region: &[u8], known: &[u64], out: &mut DirtySet) {
    let cs = geom.chunk_size() as usize;
    for (i, (chunk, &k)) in region.chunks(cs).zip(known).enumerate() {
        if chunk_hash(chunk) != k {
            out.insert(first + i as u64);
        }
    }
}

/// Running summary of one generation: xxh3-64 over the concatenation of `index (u64 LE) ‖ hash
/// (u64 LE)` for each CHUNK of the generation, in stream order.
#[derive(Clone, Default)]
pub struct Summary {
    hasher: Xxh3,
    count: u32,
}

impl Summary {
    /// The summary of an empty generation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one CHUNK: its `index` and wire hash (0 for a ZERO chunk).
    pub fn add(&mut self, index: u64, hash: u64) {
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&index.to_le_bytes());
        rec[8..].copy_from_slice(&hash.to_le_bytes());
        self.hasher.update(&rec);
        self.count = self.count.saturating_add(1);
    }

    /// Number of CHUNK frames added (saturating at `u32::MAX`).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The summary so far, as COMMIT carries it.
    pub fn digest(&self) -> u64 {
        self.hasher.digest()
    }

    /// Resets to the empty summary for the next generation.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4096 + 7];
        assert!(is_zero(&v));
        v[4096 + 6] = 1;
        assert!(!is_zero(&v));
        v[4096 + 6] = 0;
        v[17] = 0x80;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }

    #[test]
    fn zero_hashes_match_zero_chunks() {
        let g = Geometry::new(3 * 4096 + 100, 12).unwrap();
        let z = ZeroHashes::new(&g);
        assert_eq!(z.of(0), chunk_hash(&[0; 4096]));
        assert_eq!(z.of(3), chunk_hash(&[0; 100]));
    }

    #[test]
    fn scan_finds_changed_chunks() {
        let g = Geometry::new(10 * 4096, 12).unwrap();
        let mut region = vec![7u8; 10 * 4096];
        let mut known = vec![0; 10];
        hash_chunks(&g, 0, &region, &mut known);
        region[3 * 4096 + 5] = 1;
        region[9 * 4096] = 1;
        let mut d = DirtySet::new(10);
        scan_changes(&g, 0, &region, &known, &mut d);
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![3, 9]);
    }

    #[test]
    fn summary_is_order_sensitive() {
        let mut a = Summary::new();
        a.add(1, 10);
        a.add(2, 20);
        let mut b = Summary::new();
        b.add(2, 20);
        b.add(1, 10);
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.count(), 2);
    }
}
