//! NBD: a server for regions (`wire` holds the format, `server` the protocol engine) and the two
//! exports memsync offers: an owner's file whose every write is a precise dirty mark, and a lazy
//! mount of a remote region, read-only, fetching what it lacks on demand.

pub mod exports;
pub mod server;
pub mod wire;

pub use exports::{FileExport, MountExport};
pub use server::{Export, Listen, NbdServer};
