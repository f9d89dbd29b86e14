//! A restarted replica answers OPEN from its persisted state (DIR/.NAME.index, an rkyv archive):
//! `peer serve` killed with -9 at random instants of a continuous stream rehashes only the
//! extents a round may have touched since the last checkpoint, never the whole replica, and ends
//! byte-identical with its owner. (Corrupt, truncated and foreign indexes: region/index.rs.)

mod support;

use rand::{Rng, RngCore};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{wait_identical, World};

const SIZE: usize = 64 << 20;
/// The writer's pages lie in the first 8 MiB: two extents of 4 MiB.
const HOT: usize = 8 << 20;
/// 64 KiB chunks (the default).
const CHUNKS: u64 = (SIZE / 65536) as u64;

/// The number of chunks serve's log says it rehashed when the region opened (`None`: it rebuilt
/// the index, hashing every chunk).
fn rehashed(line: &str) -> Option<u64> {
    let (before, _) = line.split_once(" chunks rehashed")?;
    before.rsplit(' ').next()?.parse().ok()
}

#[test]
fn a_replica_killed_mid_stream_restarts_without_a_full_rehash() {
    let w = World::new();
    let file = w.random_file("r.bin", SIZE);
    let mut serve = w.serve();
    let owner = w.sync(&file, &["--interval", "20", "--reconnect-for", "120"]);
    let first = serve.wait_for("reconciling", Duration::from_secs(60));
    assert!(first.contains("index rebuilt (there is none)"), "{first}");
    wait_identical(&file, &w.replica("r.bin"), Duration::from_secs(60));
    // The first generation is checkpointed before its ACK (until then every extent is hot, and a
    // crash rehashes them all).
    owner.wait_for(" acknowledged: ", Duration::from_secs(60));

    // A writer rewriting random pages of the hot area for as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (file, stop) = (file.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            let mut rng = rand::rng();
            let mut page = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                rng.fill_bytes(&mut page);
                f.write_all_at(&page, rng.random_range(0..HOT / 4096) as u64 * 4096)
                    .unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let mut rng = rand::rng();
    for kill in 1..=4 {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1200)));
        serve.kill9();
        serve = w.serve();
        let line = serve.wait_for("reconciling", Duration::from_secs(60));
        let n = rehashed(&line).unwrap_or_else(|| panic!("kill {kill}: full rehash: {line}"));
        // Only the writer's two extents can be hot, and the one a run through both marks ahead.
        assert!(
            n <= 192,
            "kill {kill}: {n} of {CHUNKS} chunks rehashed: {line}"
        );
        eprintln!("kill {kill}: {n} of {CHUNKS} chunks rehashed");
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    wait_identical(&file, &w.replica("r.bin"), Duration::from_secs(60));
    drop(owner);

    // A clean stop (SIGINT) checkpoints everything: nothing to rehash.
    serve.signal(libc::SIGINT);
    serve.wait(Duration::from_secs(20));
    let serve = w.serve();
    let mut again = w.sync(&file, &["--once"]);
    assert!(
        again.wait(Duration::from_secs(60)).success(),
        "{}",
        again.output()
    );
    let line = serve.wait_for("reconciling", Duration::from_secs(60));
    assert_eq!(rehashed(&line), Some(0), "{line}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("r.bin")).unwrap()
    );
}

/// Reads `path` under a shared flock(2), as a cooperating local reader of a replica does.
fn read_locked(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).ok()?;
    // SAFETY: flock on an open descriptor.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) }, 0);
    let bytes = std::fs::read(path).ok();
    // SAFETY: as above.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    bytes
}

/// Whole generations (`--once` syncs of a region whose every page holds the generation's
/// stamp), replicated slowly, while a reader reads the replica under a shared flock: how many of
/// its reads held pages of two generations.
fn mixed_reads(serve_args: &[&str]) -> (usize, usize) {
    const PAGES: usize = 512;
    let w = World::new();
    let file = w.path("r.bin");
    std::fs::write(&file, vec![0u8; PAGES * 4096]).unwrap();
    let _serve = w.serve_with(serve_args);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (replica, stop) = (w.replica("r.bin"), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut mixed) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let Some(b) = read_locked(&replica).filter(|b| b.len() == PAGES * 4096) else {
                    continue;
                };
                reads += 1;
                if b.chunks(4096).any(|p| p[0] != b[0]) {
                    mixed += 1;
                }
            }
            (reads, mixed)
        })
    };
    for v in 1..=5u8 {
        std::fs::write(&file, vec![v; PAGES * 4096]).unwrap();
        let args = ["--once", "--chunk-size", "4096", "--max-rate", "4"];
        let mut sync = w.sync(&file, &args);
        assert!(
            sync.wait(Duration::from_secs(60)).success(),
            "{}",
            sync.output()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, mixed) = reader.join().unwrap();
    eprintln!("{mixed} of {reads} reads held two generations");
    assert!(reads > 10, "{reads} reads");
    (reads, mixed)
}

#[test]
fn readers_of_a_consistent_replica_never_see_a_generation_half_applied() {
    assert_eq!(mixed_reads(&["--consistent"]).1, 0);
}

#[test]
fn readers_of_a_direct_replica_see_generations_half_applied() {
    assert!(mixed_reads(&[]).1 > 0);
}
