//! The NBD exports memsync offers, served by [`memsync_nbd`]: an owner's file whose every write is
//! a precise dirty mark, and a lazy mount of a remote region, read-only, fetching what it lacks on
//! demand.

pub mod exports;

pub use exports::{ExportFreezer, FileExport, MountExport};
pub use memsync_nbd::{server, wire, Export, Limits, Listen, NbdServer};
