//! Live migration: downtime (freeze → the replica may write) and total time of a region moved
//! while a writer thread dirties random 4 KiB pages at 0, 16, 64 and 256 MiB/s, with the `uffd`
//! detector (an embedded `TrackedRegion`) and the `hash` detector (a mapped file), frozen by the
//! application's own callback; 4 KiB chunks, random contents (the whole region crosses in the
//! first round); against raw quinn's time for the same bytes, measured in this run.
//!
//! `cargo bench -p memsync-benches --bench migrate` (`MIGRATE_BENCH_MIB`, default 1024;
//! `MIGRATE_BENCH_DOWNTIME_MS`, default 50; `MIGRATE_BENCH_DIR`, where both copies live).

use memsync_benches::raw_quinn;
use memsync_peer::embed::TrackedRegion;
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::region::ReplicaDir;
use memsync_peer::roles::migrate::{FnFreezer, MigrateOptions, Migration, MigrationReport};
use memsync_peer::roles::owner::{SyncOptions, SyncRegion};
use rand::{Rng, RngCore, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// 4 KiB chunks: a written page costs one page on the wire, as in QEMU's RAM migration.
const SHIFT: u8 = 12;

/// Memory a writer thread may write: the bytes of an embedded region or of a mapped file.
trait Writable: Send + 'static {
    fn bytes(&mut self) -> &mut [u8];
}

impl Writable for TrackedRegion {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
}

impl Writable for memmap2::MmapMut {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
}

/// Dirties random pages of `mem` at `rate` bytes/s (one 8-byte counter per page) until stopped.
fn start_writer<W: Writable>(mut mem: W, rate: u64, stop: Arc<AtomicBool>) -> JoinHandle<W> {
    std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let pages = mem.bytes().len() / 4096;
        let start = Instant::now();
        let mut written = 0u64;
        while !stop.load(Ordering::Acquire) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if written >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let p = rng.random_range(0..pages) * 4096;
            let b = mem.bytes();
            let v = u64::from_le_bytes(b[p..p + 8].try_into().expect("8 bytes"));
            b[p..p + 8].copy_from_slice(&(v + 1).to_le_bytes());
            written += 4096;
        }
        mem
    })
}

/// Migrates `region` while a writer dirties `mem` at `rate` bytes/s; the freeze stops the writer.
fn migrate<W: Writable>(
    rt: &tokio::runtime::Runtime,
    client: &PeerEndpoint,
    addr: SocketAddr,
    mut region: SyncRegion,
    mem: W,
    rate: u64,
    downtime: Duration,
) -> MigrationReport {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = Mutex::new(Some(start_writer(mem, rate, stop.clone())));
    let freezer = FnFreezer {
        freeze: move || {
            stop.store(true, Ordering::Release);
            if let Some(w) = writer.lock().expect("writer lock").take() {
                drop(w.join().expect("writer thread"));
            }
            Ok(())
        },
        thaw: || Ok(()),
    };
    let opts = MigrateOptions {
        downtime,
        max_rounds: 30,
    };
    let migration = Migration::new(opts, vec![Box::new(freezer)]);
    let report = migration.report();
    region.migration = Some(migration);
    let opts = SyncOptions::default();
    rt.block_on(memsync_peer::roles::owner::run(
        client,
        addr,
        vec![region],
        &opts,
        Arc::default(),
    ))
    .expect("migration");
    let report = report.lock().expect("report lock").clone();
    report
}

fn main() {
    let mib: usize = std::env::var("MIGRATE_BENCH_MIB").map_or(1024, |v| v.parse().unwrap());
    let downtime = Duration::from_millis(
        std::env::var("MIGRATE_BENCH_DOWNTIME_MS").map_or(50, |v| v.parse().unwrap()),
    );
    let size = mib << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (raw, _) = rt.block_on(raw_quinn(size as u64, &a, &b)).unwrap();
    println!(
        "raw quinn, {mib} MiB: {:.0} ms (baseline); downtime target {} ms",
        raw.as_secs_f64() * 1e3,
        downtime.as_millis()
    );
    // Random contents, so the whole region crosses in the first round.
    let mut image = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut image);
    // MIGRATE_BENCH_DIR=/dev/shm puts both copies in memory, where the replica's fsync before it
    // takes ownership costs nothing: the downtime is then the protocol's alone.
    let dir = match std::env::var_os("MIGRATE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let server = rt.block_on(async { PeerEndpoint::loopback(&b, a.fingerprint()).unwrap() });
    let addr = server.local_addr();
    let replicas = ReplicaDir::open(&dir.path().join("replicas")).unwrap();
    rt.spawn(async move { memsync_peer::roles::replica::serve(&server, replicas).await });
    let client = rt.block_on(async {
        PeerEndpoint::client_for(addr, &a, TrustSet::new([b.fingerprint()])).unwrap()
    });
    println!("| detector | writer MiB/s | rounds | froze because | downtime ms | total s | total / raw quinn |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for detector in ["uffd", "hash"] {
        for rate in [0u64, 16, 64, 256] {
            let name = format!("{detector}-{rate}");
            let rate = rate << 20;
            let report = if detector == "uffd" {
                let mut mem = TrackedRegion::with_chunk_shift(size, SHIFT).unwrap();
                mem.copy_from_slice(&image);
                let region = mem.sync_region(&name).unwrap();
                migrate(&rt, &client, addr, region, mem, rate, downtime)
            } else {
                let path = dir.path().join(&name);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .unwrap();
                std::io::Write::write_all(&mut &file, &image).unwrap();
                // SAFETY: the bench owns the file; the sync maps it read-only beside this.
                let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
                let region = rt
                    .block_on(async {
                        tokio::task::block_in_place(|| SyncRegion::open(&path, &name, SHIFT))
                    })
                    .unwrap();
                migrate(&rt, &client, addr, region, map, rate, downtime)
            };
            let rate = rate >> 20;
            println!(
                "| {detector} | {rate} | {} | {} | {:.1} | {:.2} | {:.2}× |",
                report.rounds.len(),
                report.froze_because,
                report.downtime.as_secs_f64() * 1e3,
                report.total.as_secs_f64(),
                report.total.as_secs_f64() / raw.as_secs_f64()
            );
        }
    }
}
