//! The network: QUIC endpoints and region streams ([`transport`]), TLS 1.3 with mutual
//! authentication by pinned fingerprints ([`tls`]), and identities and trust sets ([`identity`]).

pub mod identity;
pub mod tls;
pub mod transport;
