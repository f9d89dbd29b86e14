//! An NBD server (the NBD project's `doc/proto.md`): the fixed-newstyle handshake (EXPORT_NAME,
//! LIST, ABORT, INFO, GO with block sizes) and the transmission phase (READ, WRITE with FUA,
//! FLUSH, TRIM, WRITE_ZEROES, CACHE, DISC) with simple replies, over TCP or a Unix socket.
//!
//! It serves anything that implements [`Export`]; it knows nothing of memsync. [`wire`] holds the
//! format as pure parsers (no I/O, fuzzed directly), [`server`] the protocol engine, whose
//! clients can hold only what [`Limits`] allows.

#![warn(missing_docs)]

pub mod server;
pub mod wire;

pub use server::{Export, Limits, Listen, NbdServer};
