//! memsync's sans-IO protocol core.
//!
//! Bytes and events go in, bytes and actions come out; time, sockets and memory stay with the
//! caller. The crate holds the wire codec ([`wire`]), region geometry ([`geometry`]), dirty-chunk
//! sets ([`dirty`]), chunk hashing ([`hash`]), the two role state machines ([`owner`],
//! [`replica`]) with the fetch-lane rules ([`lane`]), ownership epochs and fencing ([`epoch`]), and [`sim`], both roles wired together in
//! memory for tests, fuzzers and benches. `spec/PROTOCOL.md` is the normative description of
//! everything here.

#![warn(missing_docs)]

pub mod dirty;
pub mod epoch;
pub mod geometry;
pub mod hash;
pub mod lane;
pub mod owner;
pub mod replica;
pub mod sim;
pub mod wire;

pub use dirty::DirtySet;
pub use geometry::Geometry;
pub use owner::{Owner, OwnerEvent, OwnerState, Transmit};
pub use replica::{LaneEvent, Local, Replica, ReplicaEvent, ReplicaState};
pub use wire::{ErrorCode, Frame, Hello, WireError};
