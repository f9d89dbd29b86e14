//! Change detectors: each finds the chunks of a region that changed since the replica was last
//! sent them. Every peer picks its own; all feed the same owner state machine.

mod hash;

pub use hash::HashDetector;

use memsync_protocol::DirtySet;

#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error(transparent)]
    Region(#[from] crate::region::RegionError),
}

/// Finds changed chunks.
pub trait ChangeDetector: Send {
    /// The detector's name as the CLI spells it.
    fn name(&self) -> &'static str;

    /// Adds to `out` every chunk that may differ from `known` (the hash of each chunk as last
    /// sent). May report more than changed, never less.
    fn collect(&mut self, known: &[u64], out: &mut DirtySet) -> Result<(), DetectorError>;
}
