//! Change detectors: each finds the chunks of a region that changed since the replica was last
//! sent them. Every peer picks its own; all feed the same owner state machine.

mod hash;
mod inotify;
mod marks;
mod uffd;

pub use hash::HashDetector;
pub use inotify::InotifyDetector;
pub use marks::{Marks, MarksDetector, Watchers};
pub use uffd::UffdDetector;

use memsync_protocol::DirtySet;

/// Why a detector could not collect.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Region(#[from] crate::region::RegionError),
    /// Reported as "uffd write tracking: {0}".
    #[error("uffd write tracking: {0}")]
    Uffd(#[from] crate::uffd::UffdError),
    /// Reported as "inotify: {0}".
    #[error("inotify: {0}")]
    Inotify(std::io::Error),
}

/// Finds changed chunks.
pub trait ChangeDetector: Send {
    /// The detector's name as the CLI spells it.
    fn name(&self) -> &'static str;

    /// Adds to `out` every chunk that may differ from `known` (the hash of each chunk as last
    /// sent). May report more than changed, never less.
    fn collect(&mut self, known: &[u64], out: &mut DirtySet) -> Result<(), DetectorError>;

    /// Signalled when changes are waiting, for detectors that learn of writes as they happen;
    /// the sync loop then collects at once instead of at the next interval.
    fn wakeup(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// A position covering every write reported by the last `collect`.
    fn position(&self) -> u64 {
        0
    }

    /// The replica acknowledged every change up to `position`.
    fn acknowledged(&mut self, _position: u64) {}
}
