//! The `hash` detector: hashes every chunk (xxh3, one thread per core) and reports those whose
//! hash differs from what the replica was last sent. Portable and exact; its cost grows with the
//! region's size.

use super::{ChangeDetector, DetectorError};
use crate::region::Source;
use memsync_protocol::DirtySet;
use std::sync::Arc;

/// The `hash` detector over a region's bytes.
pub struct HashDetector {
    source: Arc<dyn Source>,
}

impl HashDetector {
    /// A detector that hashes `source` at every collection.
    pub fn new(source: Arc<dyn Source>) -> Self {
        HashDetector { source }
    }
}

impl ChangeDetector for HashDetector {
    fn name(&self) -> &'static str {
        "hash"
    }

    fn collect(&mut self, known: &[u64], out: &mut DirtySet) -> Result<(), DetectorError> {
        self.source.check()?;
        let now = self.source.hashes();
        // A file that shrank while it was hashed gave zeros for what it lost.
        self.source.check()?;
        for (i, (a, b)) in now.iter().zip(known).enumerate() {
            if a != b {
                out.insert(i as u64);
            }
        }
        Ok(())
    }
}
