//! Operations: what a running peer tells its operator. Every region registers its figures in one
//! process-wide registry ([`metrics`]); `--metrics ADDR` serves them as OpenMetrics text, and the
//! control socket ([`control`]) answers `peer status` with a snapshot of the same figures. The
//! drivers only update them; this module only reads them.

pub mod control;
pub mod metrics;
