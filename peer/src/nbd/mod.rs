//! The NBD exports memsync offers, served by [`memsync_nbd`]: an owner's file whose every write is
//! a precise dirty mark, a lazy mount of a remote region, read-only, fetching what it lacks on
//! demand, and a region taken over in a handoff, read-write, whose chunks still with the old owner
//! (post-copy) are fetched before they are read or written in part.

pub mod exports;

pub use exports::{ExportFreezer, FileExport, MountExport, OwnedExport};
pub use memsync_nbd::{server, wire, Export, Limits, Listen, NbdServer};
