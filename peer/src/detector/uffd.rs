//! The `uffd` detector: exact write tracking with userfaultfd WP_ASYNC and PAGEMAP_SCAN (Linux
//! 6.7). Each `collect` is one PAGEMAP_SCAN walk that returns the pages written since the last
//! one and write-protects them again atomically; pages map onto chunks. Its cost grows with the
//! number of pages written, not with the region's size.
//!
//! uffd sees only writes made through the mapping that was registered, in the address space of
//! the process that created the uffd. So it serves memory an application writes itself: a
//! region embedded as a library ([`crate::embed::TrackedRegion`]) or handed over by another
//! process with its uffd ([`crate::uffd::handover`]). A file written by other processes through
//! their own mappings or `write(2)` is invisible to it: use the `hash` detector for those.

use super::{ChangeDetector, DetectorError};
use crate::region::Source;
use crate::uffd::pagemap::WriteTracker;
use memsync_protocol::DirtySet;
use std::sync::Arc;

/// The `uffd` detector: the pages written since its last collection, from PAGEMAP_SCAN.
pub struct UffdDetector {
    source: Arc<dyn Source>,
    tracker: WriteTracker,
}

impl UffdDetector {
    /// Reports the chunks of `source` written through the range `tracker` watches; byte `i` of
    /// the tracked range is byte `i` of the region.
    pub fn new(source: Arc<dyn Source>, tracker: WriteTracker) -> Self {
        UffdDetector { source, tracker }
    }
}

impl ChangeDetector for UffdDetector {
    fn name(&self) -> &'static str {
        "uffd"
    }

    fn collect(&mut self, _known: &[u64], out: &mut DirtySet) -> Result<(), DetectorError> {
        self.source.check()?;
        let geom = self.source.geometry();
        self.tracker.collect(|pages| {
            out.insert_range(geom.chunks_of_range(pages.start, pages.end - pages.start))
        })?;
        Ok(())
    }
}
