//! The memsync peer: the drivers of the roles (owner, replica, lazy mounts) around the sans-IO
//! protocol core, with what they run on: the QUIC network with pinned mutual TLS ([`net`]),
//! region stores ([`region`]), object storage ([`store`]), change detectors ([`detector`]), NBD exports ([`nbd`]), the FUSE
//! mount of a region ([`fuse`]) and the
//! embedding API ([`embed`]). The `peer` command (`src/cli/`) is a thin layer over this library.
//!
//! Data flows one way: detector → owner state machine → QUIC stream → replica state machine →
//! store.

#![warn(missing_docs)]

pub mod detector;
pub mod embed;
pub mod fuse;
pub mod nbd;
pub mod net;
pub mod ops;
pub mod region;
pub mod roles;
pub mod store;

/// The userfaultfd layer ([`memsync_uffd`]), which the `uffd` detector, lazy regions and
/// hand-overs are built on.
pub use memsync_uffd as uffd;
