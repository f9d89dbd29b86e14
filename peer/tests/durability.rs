//! What a replica's acknowledgement survives (spec §8.4, STATE flag DURABLE): the replica
//! directory lives on a file system that loses every byte not fsynced when "the power goes"
//! (durability/lazyfs.rs), `peer serve` is killed at random instants of a stream of rounds, and
//! the file system crashes with it. With `--durability fsync` every generation the owner saw
//! acknowledged survives; with `none` the same crash loses them, which shows the harness bites.

#[path = "durability/lazyfs.rs"]
mod lazyfs;
mod support;

use lazyfs::LazyFs;
use rand::Rng;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;
use support::World;

const PAGE: usize = 4096;
const PAGES: usize = 512;

/// Writes stamp `v` into `pages` of `file`: every 8-byte word of page p is `v << 32 | p`, so a
/// page read back is either zeros, one whole stamp, or torn (which the checks refuse).
fn stamp(file: &Path, pages: impl Iterator<Item = usize>, v: u32) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    for p in pages {
        let word = ((v as u64) << 32 | p as u64).to_le_bytes();
        f.write_all_at(&word.repeat(PAGE / 8), (p * PAGE) as u64)
            .unwrap();
    }
}

/// The stamp of every page of `bytes` (0 for a page of zeros or past the end).
fn stamps(bytes: &[u8]) -> Vec<u32> {
    (0..PAGES)
        .map(|p| {
            let Some(page) = bytes.get(p * PAGE..(p + 1) * PAGE) else {
                return 0;
            };
            let word = u64::from_le_bytes(page[..8].try_into().unwrap());
            assert!(
                page.chunks(8).all(|w| w == word.to_le_bytes()),
                "page {p} is torn"
            );
            assert!(
                word == 0 || word as u32 as usize == p,
                "page {p} holds another page"
            );
            (word >> 32) as u32
        })
        .collect()
}

/// One `peer sync --once` with `extra` arguments, to its end: whether it succeeded, and its log.
fn sync_once(w: &World, file: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--once", "--chunk-size", "4096"];
    args.extend_from_slice(extra);
    let mut p = w.sync(file, &args);
    let ok = p.wait(Duration::from_secs(60)).success();
    (ok, p.output())
}

/// What one crash left: per page, the stamp the owner saw acknowledged, the stamp in flight, and
/// the stamp the replica holds once its `serve` restarted (and finished what its journal held).
struct Crash {
    acked: Vec<u32>,
    written: Vec<u32>,
    held: Vec<u32>,
}

impl Crash {
    /// Pages whose acknowledged stamp was lost.
    fn lost(&self) -> usize {
        (0..PAGES).filter(|&p| self.held[p] < self.acked[p]).count()
    }
}

/// Runs `rounds` crashes of the replica mid-stream: `serve` killed with -9, and every second time
/// the machine's power lost with it (the file system crashed).
fn crash_mid_stream(serve_args: &[&str], sync_args: &[&str], rounds: u32) -> Vec<Crash> {
    let w = World::new();
    let mut fs = LazyFs::mount(&w.path("replicas"));
    let file = w.path("stamped.bin");
    std::fs::write(&file, vec![0u8; PAGES * PAGE]).unwrap();
    stamp(&file, 0..PAGES, 1);
    let mut rng = rand::rng();
    let mut crashes = Vec::new();
    let mut serve = w.serve_with(serve_args);
    for v in 2..rounds + 2 {
        // A generation the owner saw acknowledged...
        let (ok, log) = sync_once(&w, &file, sync_args);
        assert!(ok, "{log}");
        let acked = stamps(&std::fs::read(&file).unwrap());
        // ... then the next one in flight when the replica crashes.
        stamp(&file, (0..PAGES).filter(|_| rng.random_bool(0.5)), v);
        let written = stamps(&std::fs::read(&file).unwrap());
        // Slowed down (1 MiB in flight at 2 MiB/s), so that the crash lands inside the round.
        let slow = ["--once", "--chunk-size", "4096", "--max-rate", "2"];
        let mut owner = w.sync(&file, &[&slow, sync_args].concat());
        std::thread::sleep(Duration::from_millis(rng.random_range(100..800)));
        serve.kill9();
        owner.kill9();
        let power_loss = v % 2 == 1;
        let bytes_lost = if power_loss { fs.crash() } else { 0 };
        serve = w.serve_with(serve_args);
        let held = stamps(&std::fs::read(w.replica("stamped.bin")).unwrap_or_default());
        for p in 0..PAGES {
            assert!(
                held[p] <= written[p],
                "page {p}: stamp {} never written",
                held[p]
            );
        }
        let crash = Crash {
            acked,
            written,
            held,
        };
        eprintln!(
            "crash {} ({}): {} of {PAGES} acknowledged pages lost ({bytes_lost} bytes not fsynced)",
            v - 1,
            if power_loss { "power loss" } else { "kill -9" },
            crash.lost()
        );
        crashes.push(crash);
    }
    // The restarted replica catches up with whatever it lost.
    let (ok, log) = sync_once(&w, &file, sync_args);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(w.replica("stamped.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    crashes
}

#[test]
fn durable_acknowledgements_survive_a_power_loss_of_the_replica() {
    let crashes = crash_mid_stream(&["--durability", "fsync"], &["--require-durable"], 8);
    let lost: Vec<usize> = crashes.iter().map(Crash::lost).collect();
    assert!(
        lost.iter().all(|&n| n == 0),
        "acknowledged pages lost: {lost:?}"
    );
}

/// `--consistent`: after every crash the restarted replica holds one generation whole, the one
/// acknowledged or the one in flight, never a mix (and, durable, never less than acknowledged).
#[test]
fn a_consistent_replica_holds_exactly_one_generation_after_a_crash() {
    let crashes = crash_mid_stream(&["--consistent"], &["--require-durable"], 8);
    let mut whole_rounds = 0;
    for (k, c) in crashes.iter().enumerate() {
        let mixed = (0..PAGES).filter(|&p| c.held[p] != c.acked[p]).count();
        if c.held == c.written {
            whole_rounds += 1;
        } else {
            assert_eq!(
                mixed,
                0,
                "crash {}: {mixed} pages from a half-applied generation",
                k + 1
            );
        }
    }
    eprintln!(
        "{whole_rounds} of {} crashes left the round in flight applied whole",
        crashes.len()
    );
}

/// With `none`, what a power loss takes: the generations acknowledged since the replica's last
/// checkpoint (its index syncs the data at the first commit of a stream, then every 5 s). One
/// continuous stream, its second generation acknowledged from the page cache, then the crash.
#[test]
fn without_durability_a_power_loss_loses_acknowledged_generations() {
    let w = World::new();
    let mut fs = LazyFs::mount(&w.path("replicas"));
    let file = w.path("stamped.bin");
    std::fs::write(&file, vec![0u8; PAGES * PAGE]).unwrap();
    stamp(&file, 0..PAGES, 1);
    let mut serve = w.serve();
    let mut owner = w.sync(&file, &["--chunk-size", "4096", "--interval", "50"]);
    let acks = || owner.all_with(" acknowledged: ").len();
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let replicated = || std::fs::read(w.replica("stamped.bin")).ok() == std::fs::read(&file).ok();
    until("first generation", &|| acks() > 0 && replicated());
    let before = acks();
    stamp(&file, 0..PAGES, 2);
    until("second generation", &|| acks() > before && replicated());
    std::thread::sleep(Duration::from_millis(300));
    let acked = stamps(&std::fs::read(&file).unwrap());
    serve.kill9();
    owner.kill9();
    let bytes_lost = fs.crash();
    let held = stamps(&std::fs::read(w.replica("stamped.bin")).unwrap());
    let gone = (0..PAGES).filter(|&p| held[p] < acked[p]).count();
    eprintln!("{gone} of {PAGES} acknowledged pages lost ({bytes_lost} bytes not fsynced)");
    assert!(gone > 0, "nothing lost");
    assert!(held.iter().all(|&v| v == 1 || v == 2), "{held:?}");
}

#[test]
fn an_owner_that_requires_durability_refuses_a_replica_that_does_not_promise_it() {
    let w = World::new();
    let _serve = w.serve();
    let file = w.random_file("r.bin", 1 << 20);
    let (ok, out) = sync_once(&w, &file, &["--require-durable"]);
    assert!(!ok, "{out}");
    assert!(out.contains("NOT_DURABLE"), "{out}");
    assert!(out.contains("--durability fsync"), "{out}");
}
