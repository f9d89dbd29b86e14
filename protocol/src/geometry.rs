//! Region geometry: how a region of `size` bytes splits into chunks of `1 << shift` bytes, the last
//! one possibly partial (spec/PROTOCOL.md §3).

use crate::wire::{ErrorCode, WireError};

/// Smallest chunk: 4 KiB, one page.
pub const MIN_CHUNK_SHIFT: u8 = 12;
/// Largest chunk: 4 MiB.
pub const MAX_CHUNK_SHIFT: u8 = 22;
/// Largest region: 2^46 bytes (64 TiB), [`MAX_CHUNKS`] chunks of the largest size.
pub const MAX_REGION_SIZE: u64 = 1 << 46;
/// Most chunks in one region: 2^24, so per-chunk state (hashes, bitmaps) stays bounded (128 MiB of
/// hashes at most).
pub const MAX_CHUNKS: u64 = 1 << 24;

/// The chunk layout of one region. Constructed only through [`Geometry::new`], which enforces the
/// limits above, so every method can rely on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    shift: u8,
}

impl Geometry {
    /// Validates `size` and `shift` against the spec's limits.
    pub fn new(size: u64, shift: u8) -> Result<Self, WireError> {
        if !(MIN_CHUNK_SHIFT..=MAX_CHUNK_SHIFT).contains(&shift) {
            return Err(WireError::new(
                ErrorCode::BadGeometry,
                format!("chunk shift {shift} outside {MIN_CHUNK_SHIFT}..={MAX_CHUNK_SHIFT}"),
            ));
        }
        if size == 0 || size > MAX_REGION_SIZE {
            return Err(WireError::new(
                ErrorCode::BadGeometry,
                format!("region size {size} outside 1..={MAX_REGION_SIZE}"),
            ));
        }
        let g = Geometry { size, shift };
        if g.chunk_count() > MAX_CHUNKS {
            return Err(WireError::new(
                ErrorCode::BadGeometry,
                format!(
                    "{} chunks exceed the limit of {MAX_CHUNKS}; use larger chunks",
                    g.chunk_count()
                ),
            ));
        }
        Ok(g)
    }

    /// Picks the smallest valid chunk shift not below `preferred` that keeps `size` within
    /// [`MAX_CHUNKS`].
    pub fn with_preferred_shift(size: u64, preferred: u8) -> Result<Self, WireError> {
        let mut shift = preferred.max(MIN_CHUNK_SHIFT);
        while shift < MAX_CHUNK_SHIFT && size.div_ceil(1 << shift) > MAX_CHUNKS {
            shift += 1;
        }
        Self::new(size, shift)
    }

    /// Region length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// log2 of the chunk size.
    pub fn shift(&self) -> u8 {
        self.shift
    }

    /// Bytes in a full chunk.
    pub fn chunk_size(&self) -> u64 {
        1 << self.shift
    }

    /// Number of chunks, counting a trailing partial chunk.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size())
    }

    /// Byte offset of chunk `index`. `index` must be below [`Self::chunk_count`].
    pub fn offset(&self, index: u64) -> u64 {
        debug_assert!(index < self.chunk_count());
        index << self.shift
    }

    /// Length in bytes of chunk `index` (the last one may be shorter).
    pub fn chunk_len(&self, index: u64) -> usize {
        debug_assert!(index < self.chunk_count());
        let start = index << self.shift;
        (self.size - start).min(self.chunk_size()) as usize
    }

    /// Byte range of chunk `index` within the region.
    pub fn range(&self, index: u64) -> std::ops::Range<usize> {
        let start = self.offset(index) as usize;
        start..start + self.chunk_len(index)
    }

    /// Chunk holding byte `offset`, or `None` past the end.
    pub fn chunk_of(&self, offset: u64) -> Option<u64> {
        (offset < self.size).then_some(offset >> self.shift)
    }

    /// Chunks touched by the byte range `offset..offset+len`; empty for `len == 0`. The range is
    /// clamped to the region.
    pub fn chunks_of_range(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let end = offset.saturating_add(len).min(self.size);
        if len == 0 || offset >= end {
            return 0..0;
        }
        (offset >> self.shift)..(end - 1) / self.chunk_size() + 1
    }

    /// Checks that `index` names a chunk of this region.
    pub fn check_index(&self, index: u64) -> Result<(), WireError> {
        if index < self.chunk_count() {
            Ok(())
        } else {
            Err(WireError::new(
                ErrorCode::OutOfRange,
                format!(
                    "chunk {index} past the end of a region of {} chunks",
                    self.chunk_count()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_last_chunk() {
        let g = Geometry::new(10_000, 12).unwrap();
        assert_eq!(g.chunk_count(), 3);
        assert_eq!(g.chunk_len(0), 4096);
        assert_eq!(g.chunk_len(2), 10_000 - 8192);
        assert_eq!(g.range(2), 8192..10_000);
        assert_eq!(g.chunk_of(9_999), Some(2));
        assert_eq!(g.chunk_of(10_000), None);
        assert!(g.check_index(3).is_err());
    }

    #[test]
    fn chunk_ranges() {
        let g = Geometry::new(1 << 20, 12).unwrap();
        assert_eq!(g.chunks_of_range(0, 0), 0..0);
        assert_eq!(g.chunks_of_range(0, 1), 0..1);
        assert_eq!(g.chunks_of_range(4095, 2), 0..2);
        assert_eq!(g.chunks_of_range(4096, 4096), 1..2);
        assert_eq!(g.chunks_of_range((1 << 20) - 1, 100), 255..256);
        assert_eq!(g.chunks_of_range(1 << 20, 100), 0..0);
        assert_eq!(g.chunks_of_range(u64::MAX, u64::MAX), 0..0);
    }

    #[test]
    fn limits() {
        assert!(Geometry::new(0, 12).is_err());
        assert!(Geometry::new(4096, 11).is_err());
        assert!(Geometry::new(4096, 23).is_err());
        assert!(Geometry::new(MAX_REGION_SIZE + 1, 22).is_err());
        assert!(Geometry::new(MAX_REGION_SIZE, 12).is_err()); // too many chunks
        let g = Geometry::with_preferred_shift(MAX_REGION_SIZE, 12).unwrap();
        assert_eq!(g.chunk_count(), MAX_CHUNKS);
    }
}
