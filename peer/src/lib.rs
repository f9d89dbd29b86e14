//! The memsync peer: QUIC transport with pinned mutual TLS, region stores, change detectors, and
//! the owner (`sync`) and replica (`serve`) drivers around the sans-IO protocol core.

pub mod detector;
pub mod embed;
pub mod identity;
pub mod lazy;
pub mod mount;
pub mod nbd;
pub mod region;
pub mod serve;
pub mod sync;
pub mod tls;
pub mod transport;
pub mod uffd;
