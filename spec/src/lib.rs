//! Golden vectors and (later) the protocol model for memsync.

pub mod model;
pub mod vectors;
