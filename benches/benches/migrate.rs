//! Live migration: downtime (freeze → the replica may write) and total time of a region moved
//! while a writer thread dirties random 4 KiB pages at 0, 16, 64 and 256 MiB/s, with the `uffd`
//! detector (an embedded `TrackedRegion`) and the `hash` detector (a mapped file), frozen by the
//! application's own callback, pre-copy (the last changes before the handoff) and post-copy (the
//! handoff at the freeze, the stale chunks fetched after it; total time until the new owner holds
//! everything); 4 KiB chunks, random contents (the whole region crosses in the
//! first round); against raw quinn's time for the same bytes, and against raw quinn landing them
//! in a new file in the same directory (the floor of a replica that keeps a file: on tmpfs that
//! is every page allocated, cleared and copied), each the best of three in this run. Memory is
//! touched once before anything is measured ([`prewarm`]).
//!
//! `cargo bench -p memsync-benches --bench migrate` (`MIGRATE_BENCH_MIB`, default 1024;
//! `MIGRATE_BENCH_DOWNTIME_MS`, default 50; `MIGRATE_BENCH_DIR`, where both copies live;
//! `MIGRATE_BENCH_RUNS`, migrations per cell, default 1, whose median and range are reported;
//! `MIGRATE_BENCH_DETECTORS`, default `uffd,hash`; `MIGRATE_BENCH_RATES` in MiB/s, default
//! `0,16,64,256`; `MIGRATE_BENCH_MODES`, default `precopy,postcopy`).

use memsync_benches::{raw_quinn, raw_quinn_into};
use memsync_peer::embed::TrackedRegion;
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::region::ReplicaDir;
use memsync_peer::roles::migrate::{
    FnFreezer, MigrateOptions, Migration, MigrationReport, Postcopy,
};
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
#[allow(clippy::too_many_arguments)]
fn migrate<W: Writable>(
    rt: &tokio::runtime::Runtime,
    client: &PeerEndpoint,
    addr: SocketAddr,
    mut region: SyncRegion,
    mem: W,
    rate: u64,
    downtime: Duration,
    postcopy: Postcopy,
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
        postcopy,
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

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).map_or(default, |v| v.parse().ok().expect(name))
}

fn main() {
    let mib: usize = env("MIGRATE_BENCH_MIB", 1024);
    let downtime = Duration::from_millis(env("MIGRATE_BENCH_DOWNTIME_MS", 50));
    let runs: usize = env("MIGRATE_BENCH_RUNS", 1);
    let detectors: String = env("MIGRATE_BENCH_DETECTORS", "uffd,hash".to_string());
    let rates: String = env("MIGRATE_BENCH_RATES", "0,16,64,256".to_string());
    let modes: String = env("MIGRATE_BENCH_MODES", "precopy,postcopy".to_string());
    let size = mib << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    // MIGRATE_BENCH_DIR=/dev/shm puts both copies in memory, where the replica's fsync before it
    // takes ownership costs nothing: the downtime is then the protocol's alone.
    let dir = match std::env::var_os("MIGRATE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    prewarm(dir.path(), 4 * size);
    // Both baselines are the best of three: this machine's timings vary by ±15% from run to run.
    let raw = (0..3)
        .map(|_| rt.block_on(raw_quinn(size as u64, &a, &b)).unwrap().0)
        .min()
        .expect("three runs");
    // The second baseline lands the bytes in a new file beside the replicas, as a replica must.
    let landed = dir.path().join("raw-quinn-into");
    let into = (0..3)
        .map(|_| {
            let (d, _) = rt
                .block_on(raw_quinn_into(size as u64, &a, &b, Some(&landed)))
                .unwrap();
            std::fs::remove_file(&landed).unwrap();
            d
        })
        .min()
        .expect("three runs");
    println!(
        "raw quinn, {mib} MiB, best of 3: {:.0} ms (baseline); into a new file there, best of 3: \
         {:.0} ms (second baseline); downtime target {} ms",
        raw.as_secs_f64() * 1e3,
        into.as_secs_f64() * 1e3,
        downtime.as_millis()
    );
    // Random contents, so the whole region crosses in the first round.
    let mut image = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut image);
    let server = rt.block_on(async { PeerEndpoint::loopback(&b, a.fingerprint()).unwrap() });
    let addr = server.local_addr();
    let replicas = ReplicaDir::open(&dir.path().join("replicas")).unwrap();
    rt.spawn(async move { memsync_peer::roles::replica::serve(&server, replicas).await });
    let client = rt.block_on(async {
        PeerEndpoint::client_for(addr, &a, TrustSet::new([b.fingerprint()])).unwrap()
    });
    println!(
        "| detector | mode | writer MiB/s | runs | rounds | froze because (last run) | downtime ms, p50 (min–max) | post-copy MiB, p50 | total s, p50 | total / raw quinn, p50 (min–max) | total / raw quinn into a file, p50 |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (detector, mode) in detectors
        .split(',')
        .flat_map(|d| modes.split(',').map(move |m| (d, m)))
    {
        let postcopy = match mode {
            "precopy" => Postcopy::Never,
            "postcopy" => Postcopy::Always,
            m => panic!("MIGRATE_BENCH_MODES: {m} is neither precopy nor postcopy"),
        };
        for rate in rates.split(',') {
            let rate: u64 = rate.parse().expect("MIGRATE_BENCH_RATES");
            let mut reports = Vec::new();
            for run in 0..runs {
                let name = format!("{detector}-{mode}-{rate}-{run}");
                reports.push(migrate_once(
                    &rt,
                    &client,
                    addr,
                    dir.path(),
                    &image,
                    (detector, &name),
                    rate << 20,
                    downtime,
                    postcopy,
                ));
            }
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let mut down: Vec<f64> = reports.iter().map(|r| ms(r.downtime)).collect();
            let mut total: Vec<f64> = reports.iter().map(|r| ms(r.total)).collect();
            let rounds: Vec<String> = reports.iter().map(|r| r.rounds.len().to_string()).collect();
            let mut post: Vec<f64> = reports
                .iter()
                .map(|r| {
                    r.postcopy
                        .as_ref()
                        .map_or(0.0, |p| p.bytes as f64 / (1 << 20) as f64)
                })
                .collect();
            let (p50, _, _) = median_range(&mut post);
            let (d50, dmin, dmax) = median_range(&mut down);
            let (t50, tmin, tmax) = median_range(&mut total);
            let raw = ms(raw);
            println!(
                "| {detector} | {mode} | {rate} | {runs} | {} | {} | {d50:.1} ({dmin:.1}–{dmax:.1}) | {p50:.1} | {:.2} | {:.2}× ({:.2}–{:.2}) | {:.2}× |",
                rounds.join(","),
                reports.last().expect("one run").froze_because,
                t50 / 1e3,
                t50 / raw,
                tmin / raw,
                tmax / raw,
                t50 / ms(into)
            );
        }
    }
}

/// Writes `bytes` to a scratch file in `dir` and removes it, so that the memory the baselines and
/// the migrations then take is memory the machine has touched before. On a VM whose host backs
/// guest memory lazily (this one: virtio-balloon and virtio-mem), the first touch of memory the
/// host has not backed costs ~6.5 s per GiB (RESULTS.md); without this, whichever of the baselines
/// and the migrations runs later pays for it, and the ratios measure the host, not memsync.
fn prewarm(dir: &std::path::Path, bytes: usize) {
    let scratch = dir.join("prewarm");
    let piece = vec![0x5au8; 1 << 20];
    let f = std::fs::File::create(&scratch).unwrap();
    let started = Instant::now();
    for at in (0..bytes).step_by(piece.len()) {
        std::os::unix::fs::FileExt::write_all_at(&f, &piece, at as u64).unwrap();
    }
    drop(f);
    std::fs::remove_file(&scratch).unwrap();
    eprintln!(
        "prewarm: {} MiB written and freed in {:.0} ms",
        bytes >> 20,
        started.elapsed().as_secs_f64() * 1e3
    );
}

/// The median, minimum and maximum of `v` (not empty).
fn median_range(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// One migration of a fresh copy of `image` named `name`, with `detector`'s region.
#[allow(clippy::too_many_arguments)]
fn migrate_once(
    rt: &tokio::runtime::Runtime,
    client: &PeerEndpoint,
    addr: SocketAddr,
    dir: &std::path::Path,
    image: &[u8],
    (detector, name): (&str, &str),
    rate: u64,
    downtime: Duration,
    postcopy: Postcopy,
) -> MigrationReport {
    let size = image.len();
    let report = if detector == "uffd" {
        let mut mem = TrackedRegion::with_chunk_shift(size, SHIFT).unwrap();
        mem.copy_from_slice(image);
        let region = mem.sync_region(name).unwrap();
        migrate(rt, client, addr, region, mem, rate, downtime, postcopy)
    } else {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut &file, image).unwrap();
        // SAFETY: the bench owns the file; the sync maps it read-only beside this.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        let region = rt
            .block_on(async {
                tokio::task::block_in_place(|| SyncRegion::open(&path, name, SHIFT))
            })
            .unwrap();
        let report = migrate(rt, client, addr, region, map, rate, downtime, postcopy);
        std::fs::remove_file(&path).unwrap();
        report
    };
    eprintln!(
        "{name}: first round {:.0} ms; {report}",
        report
            .rounds
            .first()
            .map_or(0.0, |r| r.duration.as_secs_f64() * 1e3)
    );
    // The replica's copy and index (1 GiB each run) go too, or /dev/shm fills up.
    for f in [name.to_string(), format!(".{name}.index")] {
        let _ = std::fs::remove_file(dir.join("replicas").join(f));
    }
    report
}
