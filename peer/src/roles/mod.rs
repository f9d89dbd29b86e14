//! The drivers of the roles, each running a protocol state machine over a QUIC stream: the owner
//! ([`owner`], `peer sync`), the replica ([`replica`], `peer serve`, with who may own or mount
//! what), and lazy mounts, in memory filled on demand ([`mount`]) or by page faults ([`lazy`]);
//! [`migrate`] moves a region's ownership to its replica while it is written, and [`follow`] keeps
//! the old owner as the new owner's replica.

pub mod follow;
pub mod lazy;
pub mod migrate;
pub mod mount;
pub mod owner;
pub mod replica;
