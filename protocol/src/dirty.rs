//! Dirty-chunk sets: a fixed-size bitmap, one bit per chunk, with fast iteration of set bits and of
//! runs of consecutive set bits.

/// A set of chunk indices below a fixed bound, stored as a bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtySet {
    words: Vec<u64>,
    len: u64,
}

impl DirtySet {
    /// An empty set for chunks `0..len`.
    pub fn new(len: u64) -> Self {
        DirtySet {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// A set holding every chunk `0..len`.
    pub fn full(len: u64) -> Self {
        let mut s = Self::new(len);
        s.insert_range(0..len);
        s
    }

    /// The bound: indices are below this.
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Adds `index`; indices at or past the bound are ignored (callers validate them first).
    pub fn insert(&mut self, index: u64) {
        if index < self.len {
            self.words[(index / 64) as usize] |= 1 << (index % 64);
        }
    }

    /// Adds every index of `range` that lies below the bound.
    pub fn insert_range(&mut self, range: std::ops::Range<u64>) {
        let end = range.end.min(self.len);
        let mut i = range.start;
        while i < end {
            let bit = i % 64;
            let n = (64 - bit).min(end - i);
            let mask = if n == 64 {
                !0
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.words[(i / 64) as usize] |= mask;
            i += n;
        }
    }

    /// Removes `index`; indices at or past the bound are ignored.
    pub fn remove(&mut self, index: u64) {
        if index < self.len {
            self.words[(index / 64) as usize] &= !(1 << (index % 64));
        }
    }

    /// Whether `index` is in the set (false at or past the bound).
    pub fn contains(&self, index: u64) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// True when the set holds no index.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Removes every index, keeping the bound.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Adds every member of `other` (sets of different bounds merge up to the smaller bound).
    pub fn union_with(&mut self, other: &DirtySet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.trim();
    }

    /// Every index below the bound that is not in the set.
    pub fn complement(&self) -> DirtySet {
        let mut c = DirtySet {
            words: self.words.iter().map(|w| !w).collect(),
            len: self.len,
        };
        c.trim();
        c
    }

    /// Moves the whole set out, leaving `self` empty with the same bound.
    pub fn take(&mut self) -> DirtySet {
        let empty = DirtySet::new(self.len);
        std::mem::replace(self, empty)
    }

    /// Smallest member at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.len {
            return None;
        }
        let mut wi = (from / 64) as usize;
        let mut w = self.words[wi] & (!0u64 << (from % 64));
        loop {
            if w != 0 {
                let i = wi as u64 * 64 + w.trailing_zeros() as u64;
                return (i < self.len).then_some(i);
            }
            wi += 1;
            if wi >= self.words.len() {
                return None;
            }
            w = self.words[wi];
        }
    }

    /// Smallest non-member at or after `from` (or the bound).
    pub fn next_clear(&self, from: u64) -> u64 {
        if from >= self.len {
            return self.len;
        }
        let mut wi = (from / 64) as usize;
        let mut w = !self.words[wi] & (!0u64 << (from % 64));
        loop {
            if w != 0 {
                return (wi as u64 * 64 + w.trailing_zeros() as u64).min(self.len);
            }
            wi += 1;
            if wi >= self.words.len() {
                return self.len;
            }
            w = !self.words[wi];
        }
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut next = self.next_set(0);
        std::iter::from_fn(move || {
            let i = next?;
            next = self.next_set(i + 1);
            Some(i)
        })
    }

    /// Maximal runs of consecutive members, as half-open ranges, in increasing order.
    pub fn runs(&self) -> impl Iterator<Item = std::ops::Range<u64>> + '_ {
        let mut from = 0;
        std::iter::from_fn(move || {
            let start = self.next_set(from)?;
            let end = self.next_clear(start);
            from = end;
            Some(start..end)
        })
    }

    fn trim(&mut self) {
        if !self.len.is_multiple_of(64) {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << (self.len % 64)) - 1;
            }
        }
    }
}

impl FromIterator<u64> for DirtySet {
    /// Collects indices into a set whose bound is one past the largest index.
    fn from_iter<T: IntoIterator<Item = u64>>(iter: T) -> Self {
        let v: Vec<u64> = iter.into_iter().collect();
        let mut s = DirtySet::new(v.iter().max().map_or(0, |m| m + 1));
        v.into_iter().for_each(|i| s.insert(i));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn matches_btreeset(len in 0u64..600, ops in prop::collection::vec((0u64..700, 0u64..80, any::<u8>()), 0..60)) {
            let mut s = DirtySet::new(len);
            let mut model = BTreeSet::new();
            for (a, n, kind) in ops {
                match kind % 3 {
                    0 => { s.insert(a); if a < len { model.insert(a); } }
                    1 => { s.remove(a); model.remove(&a); }
                    _ => { s.insert_range(a..a + n); for i in a..(a + n).min(len) { model.insert(i); } }
                }
            }
            prop_assert_eq!(s.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(s.count(), model.len() as u64);
            let flat: Vec<u64> = s.runs().flatten().collect();
            prop_assert_eq!(flat, model.iter().copied().collect::<Vec<_>>());
            // runs are maximal: consecutive runs never touch
            let runs: Vec<_> = s.runs().collect();
            for w in runs.windows(2) { prop_assert!(w[0].end < w[1].start); }
        }
    }

    #[test]
    fn full_and_union() {
        let full = DirtySet::full(130);
        assert_eq!(full.count(), 130);
        assert_eq!(full.runs().collect::<Vec<_>>(), vec![0..130]);
        let mut a = DirtySet::new(130);
        a.insert(3);
        let mut b = DirtySet::new(130);
        b.insert(129);
        a.union_with(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![3, 129]);
        let t = a.take();
        assert!(a.is_empty());
        assert_eq!(t.count(), 2);
    }
}
