//! Shared helpers for memsync's benchmarks: timing and reporting.

use std::time::{Duration, Instant};

/// Runs `f` `runs` times and returns the fastest wall time.
pub fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        let d = t.elapsed();
        best = Some(best.map_or(d, |b: Duration| b.min(d)));
        last = Some(v);
    }
    (best.expect("runs > 0"), last.expect("runs > 0"))
}

/// Bytes per second as GB/s (10^9).
pub fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Bytes per second as MiB/s.
pub fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}
