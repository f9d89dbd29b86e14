//! Hash throughput: xxh3 over 1 GiB of resident memory on one core, against a memory-read
//! baseline in the same run; plus the parallel scan the `hash` detector runs and zero detection.
//!
//! Run: `cargo bench -p memsync-benches --bench hash`

use memsync_benches::{best_of, cores, gbps};
use memsync_protocol::hash::{hash_chunks, is_zero, scan_changes};
use memsync_protocol::{DirtySet, Geometry};
use rand::RngCore;

fn main() {
    let size: usize = std::env::var("HASH_BENCH_MIB").map_or(1024, |v| v.parse().unwrap()) << 20;
    let mut region = vec![0u8; size];
    rand::rng().fill_bytes(&mut region);
    let geom = Geometry::new(size as u64, 16).unwrap();
    let n = geom.chunk_count() as usize;
    let mut hashes = vec![0u64; n];

    // Baseline: read every byte once (a sum of u64 words), what memory bandwidth allows one core.
    let (t_read, sum) = best_of(3, || {
        region.chunks_exact(8).fold(0u64, |a, w| {
            a.wrapping_add(u64::from_ne_bytes(w.try_into().unwrap()))
        })
    });
    std::hint::black_box(sum);
    let (t_hash, _) = best_of(3, || hash_chunks(&geom, 0, &region, &mut hashes));
    let (t_scan, _) = best_of(3, || {
        let mut d = DirtySet::new(n as u64);
        scan_changes(&geom, 0, &region, &hashes, &mut d);
        d
    });
    let (t_par, _) = best_of(3, || memsync_peer::region::hash_all(&geom, &region));
    // Zero detection must read a zero chunk to its end: the worst case.
    region.fill(0);
    let (t_zero, z) = best_of(3, || region.chunks(65536).filter(|c| is_zero(c)).count());
    assert_eq!(z, n);

    let gib = size as f64 / (1 << 30) as f64;
    println!(
        "region: {gib:.2} GiB resident, 64 KiB chunks, {} cores",
        cores()
    );
    println!(
        "memory read, 1 core         {:>7.2} GB/s  (baseline)",
        gbps(size as u64, t_read)
    );
    println!(
        "xxh3 chunk hash, 1 core     {:>7.2} GB/s  {:.2}x baseline",
        gbps(size as u64, t_hash),
        t_read.as_secs_f64() / t_hash.as_secs_f64()
    );
    println!(
        "scan vs known hashes, 1 core{:>7.2} GB/s",
        gbps(size as u64, t_scan)
    );
    println!(
        "hash_all, all cores         {:>7.2} GB/s",
        gbps(size as u64, t_par)
    );
    println!(
        "zero detection, 1 core      {:>7.2} GB/s",
        gbps(size as u64, t_zero)
    );
}
