//! userfaultfd on the real kernel: write tracking (WP_ASYNC + PAGEMAP_SCAN) finds exactly the
//! pages written, a tracked region replicates through real QUIC, the Unix-socket hand-overs work
//! with real client processes, and lazy regions answer reads from a remote `peer serve` and fail
//! as documented when it dies.
//!
//! Child processes are this test binary run again with `MEMSYNC_UFFD_CHILD` set (see
//! `child_entry`), so the clients need no separate build.

mod support;

use memsync_peer::embed::TrackedRegion;
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::roles::lazy::{LazyOptions, LazyRegion};
use memsync_peer::roles::owner::{SyncOptions, SyncStats};
use memsync_peer::uffd::handover::{self, GuestRegionUffdMapping, HandedRegion};
use memsync_peer::uffd::pagemap::{self, WriteTracker};
use memsync_peer::uffd::{sys, Features, Mapping, OpenFlags, RegisterMode, Uffd};
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Proc, World};

const PAGE: usize = 4096;
/// Generous bound for things that should happen in well under a second: only a guard against
/// hangs, never a performance assertion.
const HANG: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Write tracking

/// Pages (indexes) reported by one `collect`.
fn collect_pages(t: &mut WriteTracker) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    t.collect(|r| {
        for p in (r.start as usize / PAGE)..(r.end as usize / PAGE) {
            out.insert(p);
        }
    })
    .unwrap();
    out
}

fn write_byte(base: *mut u8, offset: usize, v: u8) {
    // SAFETY: callers pass offsets inside a live writable mapping they own.
    unsafe { base.add(offset).write_volatile(v) }
}

/// Random rounds of writes on `base..base+len` tracked by `t`: each round's report must equal
/// the set of pages written in it exactly (some written twice, at random offsets).
fn check_exact_rounds(base: *mut u8, len: usize, t: &mut WriteTracker, seed: u64) {
    let pages = len / PAGE;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Writes before tracking started are not reported; drain whatever setup did.
    let _ = collect_pages(t);
    for round in 0..6 {
        let n = match round {
            0 => 0,
            1 => 1,
            2 => pages, // every page
            _ => rng.random_range(1..pages / 4),
        };
        let mut written = BTreeSet::new();
        for _ in 0..n {
            let p = if round == 2 {
                written.len()
            } else {
                rng.random_range(0..pages)
            };
            written.insert(p);
            write_byte(base, p * PAGE + rng.random_range(0..PAGE), rng.random());
            if rng.random_bool(0.3) {
                // The same page again in the same round: still one report.
                write_byte(base, p * PAGE + rng.random_range(0..PAGE), rng.random());
            }
        }
        let got = collect_pages(t);
        assert_eq!(
            got.len(),
            written.len(),
            "round {round}: reported {} pages, wrote {}",
            got.len(),
            written.len()
        );
        assert_eq!(got, written, "round {round}: reported pages differ");
        // Nothing written since: nothing reported.
        assert!(
            collect_pages(t).is_empty(),
            "round {round}: spurious report"
        );
    }
}

fn self_tracker(m: &Mapping) -> WriteTracker {
    let uffd = Arc::new(WriteTracker::open_uffd().expect("uffd write tracking"));
    WriteTracker::start_self(uffd, m.addr(), m.len() as u64).expect("start tracking")
}

#[test]
fn tracking_reports_exactly_the_pages_written_anonymous() {
    let len = 32 << 20;
    let m = Mapping::anonymous(len).unwrap();
    // Half the pages populated before tracking, half never touched (WP_UNPOPULATED).
    for p in (0..len / PAGE).step_by(2) {
        write_byte(m.as_ptr(), p * PAGE, 1);
    }
    let mut t = self_tracker(&m);
    check_exact_rounds(m.as_ptr(), len, &mut t, 1);
}

fn thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

#[test]
fn tracking_reports_exactly_the_pages_written_on_transparent_huge_pages() {
    let len = 64 << 20;
    let m = Mapping::anonymous(len).unwrap();
    m.advise(rustix::mm::Advice::LinuxHugepage).unwrap();
    for p in 0..len / PAGE {
        write_byte(m.as_ptr(), p * PAGE, 7);
    }
    // Count huge pages actually backing the range (PAGEMAP_SCAN, category PAGE_IS_HUGE).
    let pm = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut huge = 0u64;
    let mut vec = Vec::new();
    pagemap::scan(
        pm.as_fd(),
        m.addr()..m.addr() + len as u64,
        0,
        sys::PAGE_IS_HUGE,
        0,
        &mut vec,
        |r, _| huge += r.end - r.start,
    )
    .unwrap();
    if thp_enabled() {
        assert!(
            huge >= 2 << 20,
            "THP is enabled but no huge page backs the region"
        );
    }
    eprintln!("{} MiB of the region in huge pages", huge >> 20);
    let mut t = self_tracker(&m);
    check_exact_rounds(m.as_ptr(), len, &mut t, 2);
}

#[test]
fn tracking_reports_exactly_the_pages_written_memfd() {
    let mut r = TrackedRegion::new(16 << 20).unwrap();
    let len = r.len();
    let memfd_base = r.as_mut_ptr();
    // The embedded region's own tracker lives inside its SyncRegion; exercise the same mapping
    // with a tracker of our own here.
    let uffd = Arc::new(WriteTracker::open_uffd().unwrap());
    let mut t = WriteTracker::start_self(uffd, memfd_base as u64, len as u64).unwrap();
    check_exact_rounds(memfd_base, len, &mut t, 3);
    // The view (a second mapping of the memfd) sees the bytes written.
    r[12345] = 0xA5;
    assert_eq!(memsync_peer::region::Source::bytes(&*r.view())[12345], 0xA5);
}

#[test]
fn writes_racing_a_scan_are_never_lost() {
    // A writer thread stamps pages with increasing values while the main thread scans and
    // copies every reported page into a shadow (what a replica does). After the writer stops
    // and one last scan, the shadow must equal the memory: no write was missed.
    let len = 8 << 20;
    let pages = len / PAGE;
    let m = Arc::new(Mapping::anonymous(len).unwrap());
    let mut t = self_tracker(&m);
    let mut shadow = vec![0u8; len];
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(4);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = rng.random_range(0..pages);
                let off = p * PAGE + rng.random_range(0..PAGE / 8) * 8;
                // SAFETY: inside the live mapping; 8-byte aligned.
                unsafe { (m.as_ptr().add(off) as *mut u64).write_volatile(n) };
                n += 1;
            }
            n
        })
    };
    let copy_pages = |t: &mut WriteTracker, shadow: &mut [u8]| {
        let mut k = 0;
        t.collect(|r| {
            let (s, e) = (r.start as usize, r.end as usize);
            // SAFETY: inside the live mapping; bytes may change under the copy (that is the
            // race under test) and are only copied.
            let src = unsafe { std::slice::from_raw_parts(m.as_ptr().add(s), e - s) };
            shadow[s..e].copy_from_slice(src);
            k += 1;
        })
        .unwrap();
        k
    };
    let mut scans = 0;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        copy_pages(&mut t, &mut shadow);
        scans += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    copy_pages(&mut t, &mut shadow);
    // SAFETY: the writer has stopped; the mapping is live.
    let now = unsafe { std::slice::from_raw_parts(m.as_ptr(), len) };
    let differing = (0..pages)
        .filter(|p| now[p * PAGE..(p + 1) * PAGE] != shadow[p * PAGE..(p + 1) * PAGE])
        .count();
    eprintln!("{writes} writes, {scans} scans");
    assert!(writes > 0 && scans > 1);
    assert_eq!(
        differing, 0,
        "{differing} pages changed without being reported"
    );
}

// ---------------------------------------------------------------------------------------------
// Peers

/// This test binary again, as child `role` (see `child_entry`).
fn child(role: &str, env: &[(&str, &str)]) -> Proc {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(exe);
    c.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("MEMSYNC_UFFD_CHILD", role)
        .stdin(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    Proc::spawn(&mut c)
}

/// Waits until the file at `path` holds exactly `want`.
fn wait_file_equals(path: &Path, want: impl Fn() -> Vec<u8>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = std::fs::read(path).unwrap_or_default();
        let want = want();
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let pages = want.len().min(got.len()) / PAGE;
            let bad = (0..pages)
                .filter(|p| got[p * PAGE..(p + 1) * PAGE] != want[p * PAGE..(p + 1) * PAGE])
                .count();
            panic!(
                "{} never matched: {} vs {} bytes, {bad} pages differ",
                path.display(),
                got.len(),
                want.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A deterministic, incompressible-ish pattern: byte `i` of region `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

// ---------------------------------------------------------------------------------------------
/// A runtime, a `serve` on loopback into a temporary directory, its address, and a client
/// endpoint trusted by it.
fn serve_in_process() -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    std::net::SocketAddr,
    PeerEndpoint,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = rt.block_on(async { PeerEndpoint::loopback(&b, a.fingerprint()).unwrap() });
    let addr = server.local_addr();
    let replicas = memsync_peer::region::ReplicaDir::open(dir.path()).unwrap();
    rt.spawn(async move { memsync_peer::roles::replica::serve(&server, replicas).await });
    let trust = TrustSet::new([b.fingerprint()]);
    let client = rt.block_on(async { PeerEndpoint::client_for(addr, &a, trust).unwrap() });
    (rt, dir, addr, client)
}

// Migration of an embedded region

/// An application writing its tracked memory, which starts as `initial`, migrates it to a
/// `serve`: pre-copy with the `uffd` detector while its writer thread increments counters in
/// random pages (in the style of QEMU's migration test), and the application's own callback stops
/// the writer at the freeze. Returns the memory as the writer left it and the replica's file.
fn migrate_embedded(initial: &[u8], seed: u64) -> (Vec<u8>, Vec<u8>) {
    use memsync_peer::roles::migrate::{FnFreezer, MigrateOptions, Migration};
    let (rt, dir, addr, client) = serve_in_process();

    let size = initial.len();
    let mut region = TrackedRegion::new(size).unwrap();
    region.copy_from_slice(initial);
    let mut sync_region = region.sync_region("app").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while !stop.load(Ordering::Acquire) {
                for _ in 0..64 {
                    let page = rng.random_range(0..size / 4096) * 4096;
                    let v = u64::from_le_bytes(region[page..page + 8].try_into().unwrap());
                    region[page..page + 8].copy_from_slice(&(v + 1).to_le_bytes());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            region
        })
    };
    let writer = Arc::new(std::sync::Mutex::new(Some(writer)));
    let stopped = Arc::new(std::sync::Mutex::new(None));
    let freeze = {
        let (stop, writer, stopped) = (stop.clone(), writer.clone(), stopped.clone());
        move || {
            stop.store(true, Ordering::Release);
            let region = writer
                .lock()
                .unwrap()
                .take()
                .expect("frozen once")
                .join()
                .unwrap();
            *stopped.lock().unwrap() = Some(region);
            Ok(())
        }
    };
    let freezer = FnFreezer {
        freeze,
        thaw: || Ok(()),
    };
    let opts = MigrateOptions {
        downtime: Duration::from_millis(20),
        max_rounds: 50,
        ..MigrateOptions::default()
    };
    let migration = Migration::new(opts, vec![Box::new(freezer)]);
    let report = migration.report();
    sync_region.migration = Some(migration);
    let opts = SyncOptions {
        interval: Duration::from_millis(20),
        ..SyncOptions::default()
    };
    rt.block_on(memsync_peer::roles::owner::run(
        &client,
        addr,
        vec![sync_region],
        &opts,
        Arc::default(),
    ))
    .unwrap();
    let report = report.lock().unwrap().clone();
    eprintln!("embedded migration: {report}");
    assert!(report.downtime > Duration::ZERO);
    let region = stopped
        .lock()
        .unwrap()
        .take()
        .expect("the writer was frozen");
    (
        region.to_vec(),
        std::fs::read(dir.path().join("app")).unwrap(),
    )
}

/// The page counters of `mem`.
fn page_counters(mem: &[u8]) -> Vec<u64> {
    mem.chunks(4096)
        .map(|p| u64::from_le_bytes(p[..8].try_into().unwrap()))
        .collect()
}

/// The there-and-back move with the `uffd` detector: the application migrates its memory A → B,
/// continues at B from B's copy, and migrates back; each replica holds exactly what the writer
/// last wrote, and no page at B went back from A's.
#[test]
fn an_embedded_region_migrates_there_and_back_with_the_applications_own_freeze() {
    let size = 16 << 20;
    let (at_a, b_copy) = migrate_embedded(&vec![0; size], 5);
    let written = page_counters(&at_a);
    assert!(
        written.iter().sum::<u64>() > 0,
        "the writer wrote nothing before the freeze"
    );
    assert!(b_copy == at_a, "B's copy is not what A's writer last wrote");
    let (at_b, a_copy) = migrate_embedded(&b_copy, 6);
    assert!(a_copy == at_b, "A's copy is not what B's writer last wrote");
    let went_on = page_counters(&at_b);
    assert!(
        (0..size / 4096).all(|p| went_on[p] >= written[p]),
        "a page went back"
    );
    assert!(went_on.iter().sum::<u64>() > written.iter().sum::<u64>());
}

// Replication of an embedded region

#[test]
fn embedded_region_replicates_through_sync_run_and_serve() {
    let (rt, dir, addr, client) = serve_in_process();

    let size = 24 << 20;
    let mut region = TrackedRegion::new(size).unwrap();
    region.copy_from_slice(&pattern(size, 10));
    let sync_region = region.sync_region("embedded").unwrap();
    let stats = Arc::new(SyncStats::default());
    let opts = SyncOptions {
        interval: Duration::from_millis(20),
        once: false,
        reconnect_for: Duration::from_secs(10),
        ..SyncOptions::default()
    };
    let st = stats.clone();
    let task = rt.spawn(async move {
        memsync_peer::roles::owner::run(&client, addr, vec![sync_region], &opts, st).await
    });
    let replica = dir.path().join("embedded");
    let expect = |r: &TrackedRegion| r.to_vec();
    wait_file_equals(&replica, || expect(&region), HANG);
    // Rounds of random writes (some pages twice) while the sync runs: the replica follows.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for round in 0..5 {
        for _ in 0..rng.random_range(1..400) {
            let off = rng.random_range(0..size);
            region[off] = rng.random();
        }
        if round == 4 {
            // A burst across a whole chunk and beyond.
            let s = rng.random_range(0..size - 200_000);
            rng.fill_bytes(&mut region[s..s + 200_000]);
        }
        let snapshot = region.to_vec();
        wait_file_equals(&replica, || snapshot.clone(), HANG);
    }
    assert!(stats.rounds_acked.load(Ordering::Relaxed) >= 5);
    // Only the chunks written travel after the first transfer: far fewer than the region.
    let sent = stats.chunks_sent.load(Ordering::Relaxed);
    let chunks = (size >> 16) as u64;
    assert!(
        sent < chunks + 5 * 420,
        "{sent} chunks sent for a {chunks}-chunk region and ~2000 small writes"
    );
    task.abort();
}

// ---------------------------------------------------------------------------------------------
// The CLI refuses uffd on files

#[test]
fn sync_with_detector_uffd_refuses_a_file_with_an_explanation() {
    let w = World::new();
    let f = w.path("file.bin");
    std::fs::write(&f, pattern(1 << 20, 5)).unwrap();
    let mut args = vec![
        "sync",
        "--region",
        f.to_str().unwrap(),
        "--detector",
        "uffd",
    ];
    let owner = w.owner_args();
    args.extend(owner.iter().map(String::as_str));
    let mut p = Proc::start(&args);
    let status = p.wait(HANG);
    assert!(!status.success());
    let out = p.output();
    assert!(
        out.contains("only writes made through this process") && out.contains("--detector hash"),
        "unexpected message:\n{out}"
    );
    assert!(!w.replica("file.bin").exists());
}

// ---------------------------------------------------------------------------------------------
// Hand-over of a region for write tracking, with a client process

#[test]
fn handed_over_region_replicates_while_its_process_writes() {
    let w = World::new();
    let _serve = w.serve();
    let sock = w.path("track.sock");
    let mut args = vec![
        "uffd",
        "track",
        "--socket",
        sock.to_str().unwrap(),
        "--interval",
        "20",
    ];
    let owner = w.owner_args();
    args.extend(owner.iter().map(String::as_str));
    let tracker = Proc::start(&args);
    tracker.wait_for("accepting write-tracking hand-overs", HANG);

    let size = 8 << 20;
    let dump = w.path("client.dump");
    let size_s = size.to_string();
    let mut client = child(
        "track-client",
        &[
            ("SOCKET", sock.to_str().unwrap()),
            ("NAME", "handed"),
            ("SIZE", &size_s),
            ("DUMP", dump.to_str().unwrap()),
        ],
    );
    client.wait_for("client ready", HANG);
    let replica = w.replica("handed");
    wait_file_equals(&replica, || pattern(size, 20), HANG);
    // While the client lives, only write tracking can find its changes.
    for round in 1..=3 {
        client.send_line(&format!("round {round}"));
        client.wait_for(&format!("round {round} dumped"), HANG);
        let want = std::fs::read(&dump).unwrap();
        wait_file_equals(&replica, || want.clone(), HANG);
    }
    // Its last writes, then it exits at once: the peer reconciles by hashes.
    client.send_line("last");
    assert!(
        client.wait(HANG).success(),
        "client failed:\n{}",
        client.output()
    );
    let want = std::fs::read(&dump).unwrap();
    wait_file_equals(&replica, || want.clone(), HANG);
    tracker.wait_for("final state replicated", HANG);
}

/// Random writes to a region, seeded by `round`: single bytes on random pages and a run.
fn scribble(mem: &mut [u8], round: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + round);
    for _ in 0..rng.random_range(10..300) {
        let i = rng.random_range(0..mem.len());
        mem[i] = rng.random();
    }
    let s = rng.random_range(0..mem.len() - 70_000);
    rng.fill_bytes(&mut mem[s..s + 70_000]);
}

fn write_dump(path: &str, bytes: &[u8]) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn child_track_client() {
    let env = |k: &str| std::env::var(k).unwrap();
    let size: usize = env("SIZE").parse().unwrap();
    let init = pattern(size, 20);
    let mut r = HandedRegion::create(
        Path::new(&env("SOCKET")),
        &env("NAME"),
        size,
        65536,
        Some(&init),
    )
    .unwrap();
    eprintln!("client ready");
    for line in std::io::stdin().lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("round ") {
            let n: u64 = n.parse().unwrap();
            scribble(&mut r, n);
            write_dump(&env("DUMP"), &r);
            eprintln!("round {n} dumped");
        } else if line == "last" {
            scribble(&mut r, 99);
            write_dump(&env("DUMP"), &r);
            std::process::exit(0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lazy regions

/// A world whose `peer serve` holds region `img` with `bytes` (as a replica it received).
fn world_with_image(bytes: &[u8]) -> (World, Proc) {
    let w = World::new();
    std::fs::write(w.replica("img"), bytes).unwrap();
    let s = w.serve();
    (w, s)
}

/// Mounts the world's region "img" lazily with `opts`.
fn mount_img(
    rt: &tokio::runtime::Runtime,
    ep: &memsync_peer::net::transport::PeerEndpoint,
    w: &World,
    opts: LazyOptions,
) -> Arc<LazyRegion> {
    let addr = w.addr().parse().unwrap();
    Arc::new(
        rt.block_on(LazyRegion::mount(ep, addr, "img", opts))
            .unwrap(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn lazy_region_answers_random_reads_from_several_threads() {
    let size = 48 << 20;
    let img = Arc::new(pattern(size, 30));
    let (w, _serve) = world_with_image(&img);
    let rt = runtime();
    let ep = rt.block_on(async { w.owner_endpoint() });
    let region = mount_img(&rt, &ep, &w, LazyOptions::default());
    assert_eq!(region.len(), size);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (region, img) = (region.clone(), img.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(40 + t);
                for _ in 0..300 {
                    let len = rng.random_range(1..9000);
                    let off = rng.random_range(0..size - len);
                    let got = &region.bytes()[off..off + len];
                    assert!(
                        got == &img[off..off + len],
                        "thread {t}: bytes at {off} differ"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(region.stats().faults.load(Ordering::Relaxed) > 0);
    rt.block_on(region.complete()).unwrap();
    assert_eq!(region.missing(), 0);
    assert!(
        region.bytes() == &img[..],
        "complete region differs from the owner's"
    );
    // The safe read path returns the same bytes.
    let mut buf = vec![0u8; 100_000];
    rt.block_on(region.read(1_234_567, &mut buf)).unwrap();
    assert_eq!(&buf[..], &img[1_234_567..1_334_567]);
}

#[test]
fn lazy_read_of_a_never_fetched_chunk_overtakes_the_background_pull() {
    let size = 384 << 20;
    let img = Arc::new(pattern(size, 31));
    let (w, _serve) = world_with_image(&img);
    let rt = runtime();
    let ep = rt.block_on(async { w.owner_endpoint() });
    let n = (size >> 16) as u64;
    let priority = n - 16..n - 8;
    let opts = LazyOptions {
        priority: vec![priority.clone()],
        ..LazyOptions::default()
    };
    let region = mount_img(&rt, &ep, &w, opts);
    // A chunk in the middle, far beyond anything the in-order push can have sent yet.
    let mid = (n / 2) as usize;
    let off = mid << 16;
    let r = region.clone();
    let got = std::thread::spawn(move || r.bytes()[off..off + 65536].to_vec())
        .join()
        .unwrap();
    let missing_then = region.missing();
    assert!(
        got == img[off..off + 65536],
        "chunk {mid} has the wrong bytes"
    );
    assert!(
        missing_then > 0,
        "the background pull had finished before the read was answered"
    );
    assert_eq!(region.touch_order().first(), Some(&(mid as u64)));
    // The owner answered the urgent fetch on the lane too (the chunk was not sent yet); which
    // copy arrived first is a race, so wait for the lane's.
    let deadline = Instant::now() + HANG;
    while region.lane_copies() == 0 {
        assert!(
            Instant::now() < deadline,
            "the urgent chunk never came on the fetch lane"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The prioritised chunks arrive ahead of the in-order push.
    let deadline = Instant::now() + HANG;
    while !priority.clone().all(|c| region.is_present(c)) {
        assert!(Instant::now() < deadline, "priority chunks never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    let missing_at_priority = region.missing();
    assert!(
        missing_at_priority > n / 4,
        "priority chunks arrived only after {} of {n} chunks",
        n - missing_at_priority
    );
    rt.block_on(region.complete()).unwrap();
    assert!(region.bytes() == &img[..]);
}

/// A fault is answered with its own page ahead of its chunk (FETCH_PART, then PART on the fetch
/// lane): a page inside a chunk, and the region's last page, which the region ends inside.
#[test]
fn a_faulting_page_comes_ahead_of_its_chunk() {
    let size = (256 << 20) + 100;
    let img = Arc::new(pattern(size, 33));
    let (w, _serve) = world_with_image(&img);
    let rt = runtime();
    let ep = rt.block_on(async { w.owner_endpoint() });
    let region = mount_img(&rt, &ep, &w, LazyOptions::default());
    // Page 5 of a chunk in the middle, then the last byte; both far beyond the in-order push.
    let inside = (((size >> 16) / 2) << 16) + 5 * 4096 + 17;
    let r = region.clone();
    let got = std::thread::spawn(move || {
        let b = r.bytes();
        (b[inside..inside + 4000].to_vec(), b[size - 1])
    })
    .join()
    .unwrap();
    assert!(
        got.0 == img[inside..inside + 4000],
        "the page inside a chunk differs"
    );
    assert_eq!(got.1, img[size - 1], "the region's last byte differs");
    let deadline = Instant::now() + HANG;
    while region.lane_parts() < 2 {
        assert!(
            Instant::now() < deadline,
            "{} of the two faulting pages came as parts",
            region.lane_parts()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.block_on(region.complete()).unwrap();
    assert!(region.bytes() == &img[..]);
}

#[test]
fn a_rate_limit_holds_back_the_push_while_reads_are_answered() {
    let size = 64 << 20;
    let img = Arc::new(pattern(size, 33));
    let w = World::new();
    std::fs::write(w.replica("img"), &img[..]).unwrap();
    let _serve = w.serve_with(&["--mount-max-rate", "1"]);
    let rt = runtime();
    let ep = rt.block_on(async { w.owner_endpoint() });
    let region = mount_img(&rt, &ep, &w, LazyOptions::default());
    // Reads from the far end, one chunk apart: each is fetched, none waits for the push.
    let n = (size >> 16) as u64;
    let r = region.clone();
    let reads: Vec<usize> = (0..8).map(|k| ((n - 1 - 2 * k) as usize) << 16).collect();
    let got = {
        let reads = reads.clone();
        std::thread::spawn(move || {
            reads
                .iter()
                .map(|&off| r.bytes()[off..off + 65536].to_vec())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap()
    };
    for (off, bytes) in reads.iter().zip(&got) {
        assert!(
            bytes[..] == img[*off..*off + 65536],
            "chunk at {off} differs"
        );
    }
    // Two seconds on, the push at 1 MiB/s has carried a few chunks, not the 64 MiB it carries
    // unpaced in a fraction of a second here.
    std::thread::sleep(Duration::from_secs(2));
    let arrived = n - region.missing();
    assert!(
        arrived < n / 2,
        "{arrived} of {n} chunks arrived: the push was not held to the limit"
    );
}

#[test]
fn sequential_faults_trigger_read_ahead() {
    let size = 64 << 20;
    let img = pattern(size, 32);
    let (w, _serve) = world_with_image(&img);
    let rt = runtime();
    let ep = rt.block_on(async { w.owner_endpoint() });
    let region = mount_img(&rt, &ep, &w, LazyOptions::default());
    // Walk the second half page by page from a thread.
    let r = region.clone();
    let sum = std::thread::spawn(move || {
        let b = r.bytes();
        (size / 2..size)
            .step_by(PAGE)
            .map(|o| b[o] as u64)
            .sum::<u64>()
    })
    .join()
    .unwrap();
    let want: u64 = (size / 2..size).step_by(PAGE).map(|o| img[o] as u64).sum();
    assert_eq!(sum, want);
    assert!(region.stats().readahead_chunks.load(Ordering::Relaxed) > 0);
}

#[test]
fn lazy_region_reports_a_lost_owner_instead_of_hanging() {
    let size = 256 << 20;
    let img = pattern(size, 33);
    let (w, serve) = world_with_image(&img);
    let owner = w.owner_args();
    let mut reader = child(
        "lazy-reader",
        &[
            ("PEER", &owner[1]),
            ("IDENTITY", &owner[3]),
            ("TRUST", &owner[5]),
        ],
    );
    reader.wait_for("mounted", HANG);
    // Freeze the owner at once (SIGKILL follows: a frozen process is as gone as a dead one).
    serve.signal(libc::SIGSTOP);
    serve.signal(libc::SIGKILL);
    let last = size - 1000;
    // The error-returning path: LazyRegion::read.
    reader.send_line(&format!("read {last}"));
    let line = reader.wait_for("read at", HANG);
    assert!(line.contains("failed"), "expected an error, got: {line}");
    // The direct path: a fault on a chunk that never arrived raises SIGBUS.
    reader.send_line(&format!("touch {last}"));
    let status = reader.wait(HANG);
    assert_eq!(
        status.signal(),
        Some(libc::SIGBUS),
        "expected death by SIGBUS, got {status:?}:\n{}",
        reader.output()
    );
    assert!(reader.output().contains("get SIGBUS"));
}

fn child_lazy_reader() {
    let env = |k: &str| std::env::var(k).unwrap();
    let rt = runtime();
    let id = Identity::load_or_create(Path::new(&env("IDENTITY"))).unwrap();
    let trust =
        TrustSet::new([memsync_peer::net::identity::Fingerprint::parse(&env("TRUST")).unwrap()]);
    let addr = env("PEER").parse().unwrap();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .init();
    let region = rt
        .block_on(async {
            let ep = PeerEndpoint::client_for(addr, &id, trust).unwrap();
            let r = LazyRegion::mount(&ep, addr, "img", LazyOptions::default()).await;
            std::mem::forget(ep); // keep the socket for the process's life
            r
        })
        .unwrap();
    eprintln!("mounted, {} chunks missing", region.missing());
    for line in std::io::stdin().lines().map_while(Result::ok) {
        if let Some(o) = line.strip_prefix("read ") {
            let o: u64 = o.parse().unwrap();
            let mut b = [0u8; 1];
            match rt.block_on(region.read(o, &mut b)) {
                Ok(()) => eprintln!("read at {o}: {}", b[0]),
                Err(e) => eprintln!("read at {o} failed: {e}"),
            }
        } else if let Some(o) = line.strip_prefix("touch ") {
            let o: usize = o.parse().unwrap();
            let v = region.bytes()[o];
            eprintln!("touched {o}: {v}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Firecracker's page-fault-handler hand-over

/// Starts `peer uffd restore` for region `img` and a fake VMM whose guest memory is `regions`
/// (size, offset in the image) handed to it.
fn restore_and_vmm(w: &World, regions: &str) -> (Proc, Proc) {
    let mut args = vec!["--name".to_owned(), "img".to_owned()];
    args.extend(w.owner_args());
    restore_from(w, &args, &[], regions)
}

/// `restore_and_vmm` with `from` naming the image and `env` for `peer uffd restore`.
fn restore_from(w: &World, from: &[String], env: &[(&str, String)], regions: &str) -> (Proc, Proc) {
    let sock = w.path("pf.sock");
    let restore = Proc::spawn(
        std::process::Command::new(support::BIN)
            .args(["uffd", "restore", "--socket", sock.to_str().unwrap()])
            .args(from)
            .envs(env.iter().map(|(k, v)| (k, v))),
    );
    restore.wait_for("waiting for a VMM", HANG);
    let vmm = child(
        "fake-vmm",
        &[
            ("SOCKET", sock.to_str().unwrap()),
            ("REGIONS", regions),
            ("IMAGE", w.replica("img").to_str().unwrap()),
        ],
    );
    vmm.wait_for("handed over", HANG);
    (restore, vmm)
}

/// The fake VMM reads all its memory and compares it with the image, then exits; so does the
/// restore, successfully.
fn verify_then_exit(restore: &mut Proc, vmm: &mut Proc) {
    vmm.send_line("verify");
    vmm.wait_for("verified", HANG);
    assert!(vmm.output().contains("verified ok"), "{}", vmm.output());
    vmm.send_line("exit");
    assert!(vmm.wait(HANG).success());
    let status = restore.wait(HANG);
    assert!(status.success(), "restore failed:\n{}", restore.output());
}

#[test]
fn firecracker_handover_restores_a_vmm_memory_from_a_remote_peer() {
    let img = pattern(40 << 20, 34);
    let (w, _serve) = world_with_image(&img);
    // Two guest regions, the second taken from the image's end (offsets need not follow the
    // address order).
    let (mut restore, mut vmm) =
        restore_and_vmm(&w, &format!("{}:{},{}:0", 8 << 20, 32 << 20, 32 << 20));
    verify_then_exit(&mut restore, &mut vmm);
}

#[test]
fn firecracker_handover_restores_a_vmm_memory_from_an_object_store() {
    let img = pattern(24 << 20, 36);
    let g = support::garage::Garage::start();
    let w = World::new();
    let file = w.path("img");
    std::fs::write(&file, &img).unwrap();
    let url = format!("s3://{}/vms/img", support::garage::BUCKET);
    let up = std::process::Command::new(support::BIN)
        .args([
            "sync",
            "--region",
            file.to_str().unwrap(),
            "--to",
            &url,
            "--once",
        ])
        .arg("--identity")
        .arg(w.path("owner-id"))
        .envs(g.env())
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // The fake VMM compares with the image where a replica would be.
    std::fs::create_dir_all(w.path("replicas")).unwrap();
    std::fs::write(w.replica("img"), &img).unwrap();
    let (mut restore, mut vmm) = restore_from(
        &w,
        &["--from".to_owned(), format!("{url}@1")],
        &g.env(),
        &format!("{}:{},{}:0", 8 << 20, 16 << 20, 16 << 20),
    );
    restore.wait_for("vms/img@1 mounted", HANG);
    verify_then_exit(&mut restore, &mut vmm);
}

#[test]
fn firecracker_handover_with_the_owner_lost_sigbuses_the_vmm_and_fails() {
    let img = pattern(256 << 20, 35);
    let (w, serve) = world_with_image(&img);
    let (mut restore, mut vmm) = restore_and_vmm(&w, &format!("{}:0", 256 << 20));
    restore.wait_for("mounted", HANG);
    serve.signal(libc::SIGSTOP);
    serve.signal(libc::SIGKILL);
    vmm.send_line(&format!("touch {}", (256 << 20) - 5000));
    let status = vmm.wait(HANG);
    assert_eq!(
        status.signal(),
        Some(libc::SIGBUS),
        "expected the VMM to get SIGBUS, got {status:?}:\n{}",
        vmm.output()
    );
    let status = restore.wait(HANG);
    assert_eq!(status.code(), Some(1), "restore:\n{}", restore.output());
    assert!(restore.output().contains("failed"), "{}", restore.output());
}

fn child_fake_vmm() {
    let env = |k: &str| std::env::var(k).unwrap();
    let image = std::fs::read(env("IMAGE")).unwrap();
    let regions: Vec<(usize, u64)> = env("REGIONS")
        .split(',')
        .map(|r| {
            let (s, o) = r.split_once(':').unwrap();
            (s.parse().unwrap(), o.parse().unwrap())
        })
        .collect();
    // What a VMM does: anonymous guest memory, a uffd, MISSING registration, the hand-over.
    let uffd = Uffd::new(OpenFlags::default(), Features::EVENT_REMOVE).unwrap();
    let maps: Vec<(Mapping, u64)> = regions
        .iter()
        .map(|&(s, o)| (Mapping::anonymous(s).unwrap(), o))
        .collect();
    let mut mappings = Vec::new();
    for (m, o) in &maps {
        uffd.register(m.addr(), m.len() as u64, RegisterMode::MISSING)
            .unwrap();
        mappings.push(GuestRegionUffdMapping {
            base_host_virt_addr: m.addr(),
            size: m.len() as u64,
            offset: *o,
            page_size: Some(PAGE as u64),
            page_size_kib: Some(PAGE as u64),
        });
    }
    let sock = std::os::unix::net::UnixStream::connect(env("SOCKET")).unwrap();
    handover::send_faults(&sock, &mappings, uffd.as_fd()).unwrap();
    eprintln!("handed over");
    for line in std::io::stdin().lines().map_while(Result::ok) {
        if line == "verify" {
            // Several vCPU-like threads reading every page in different orders.
            let ok = std::thread::scope(|s| {
                let hs: Vec<_> = (0..3u64)
                    .map(|t| {
                        let (maps, image) = (&maps, &image);
                        s.spawn(move || {
                            let mut bad = 0;
                            for (m, o) in maps {
                                let pages = m.len() / PAGE;
                                let mut order: Vec<usize> = (0..pages).collect();
                                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                                if t > 0 {
                                    for i in (1..pages).rev() {
                                        order.swap(i, rng.random_range(0..=i));
                                    }
                                }
                                for p in order {
                                    // SAFETY: inside the live mapping; reads fault to the handler.
                                    let got = unsafe {
                                        std::slice::from_raw_parts(m.as_ptr().add(p * PAGE), PAGE)
                                    };
                                    let at = *o as usize + p * PAGE;
                                    if got != &image[at..at + PAGE] {
                                        bad += 1;
                                    }
                                }
                            }
                            bad
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum::<usize>() == 0
            });
            eprintln!("verified {}", if ok { "ok" } else { "MISMATCH" });
        } else if let Some(o) = line.strip_prefix("touch ") {
            let o: usize = o.parse().unwrap();
            // SAFETY: inside the first live mapping.
            let v = unsafe { maps[0].0.as_ptr().add(o).read_volatile() };
            eprintln!("touched {o}: {v}");
        } else if line == "exit" {
            std::process::exit(0);
        }
    }
}

/// Entry point of child processes (this binary re-run with MEMSYNC_UFFD_CHILD set); a no-op
/// test otherwise.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("MEMSYNC_UFFD_CHILD") else {
        return;
    };
    match role.as_str() {
        "track-client" => child_track_client(),
        "lazy-reader" => child_lazy_reader(),
        "fake-vmm" => child_fake_vmm(),
        r => panic!("unknown child role {r}"),
    }
    std::process::exit(0);
}

/// UFFDIO_CONTINUE on shared memory: pages already in the memfd's page cache (written through
/// another mapping) but not yet mapped in the registered one raise MINOR faults, which
/// CONTINUE resolves by mapping those pages: the reader sees the bytes, nothing is copied.
#[test]
fn minor_faults_on_shared_memory_are_resolved_with_continue() {
    let probe = memsync_peer::uffd::Probe::run();
    assert!(
        probe.features.contains(Features::MINOR_SHMEM),
        "this kernel offers MINOR_SHMEM (Linux 5.13), yet the probe found {:?}",
        probe.features
    );
    let ps = memsync_peer::uffd::page_size();
    let len = 16 * ps;
    let memfd = rustix::fs::memfd_create("continue-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, len as u64).unwrap();
    let alias = Mapping::shared(memfd.as_fd(), len, true).unwrap();
    let registered = Arc::new(Mapping::shared(memfd.as_fd(), len, true).unwrap());
    let uffd = Uffd::new(OpenFlags::default(), Features::MINOR_SHMEM).unwrap();
    uffd.register(registered.addr(), len as u64, RegisterMode::MINOR)
        .unwrap();
    // Fill the page cache through the alias only.
    // SAFETY: `alias` is a live writable mapping of `len` bytes owned by this test.
    let a = unsafe { std::slice::from_raw_parts_mut(alias.as_ptr(), len) };
    for (i, b) in a.iter_mut().enumerate() {
        *b = (i / ps) as u8 ^ 0xA5;
    }
    let pages = [3usize, 7, 15];
    let r = registered.clone();
    let reader = std::thread::spawn(move || {
        pages
            .iter()
            // SAFETY: inside the registered mapping; a read of an unmapped page waits for the
            // handler below.
            .map(|p| unsafe { r.as_ptr().add(p * ps + 5).read_volatile() })
            .collect::<Vec<u8>>()
    });
    let mut resolved = Vec::new();
    let deadline = Instant::now() + HANG;
    while resolved.len() < pages.len() {
        assert!(Instant::now() < deadline, "the reader's faults never came");
        if !uffd.poll(100).unwrap() {
            continue;
        }
        let mut events = Vec::new();
        uffd.read_events(&mut events, 8).unwrap();
        for ev in events {
            let memsync_peer::uffd::Event::Pagefault { address, minor, .. } = ev else {
                panic!("unexpected event {ev:?}");
            };
            assert!(minor, "a fault on a page in the page cache must be MINOR");
            let page = address / ps as u64 * ps as u64;
            resolved.push((page - registered.addr()) as usize / ps);
            // SAFETY: the page is in the registered range and its contents are the memfd's.
            unsafe { uffd.cont(page, ps as u64, true) }.unwrap();
        }
    }
    let got = reader.join().unwrap();
    assert_eq!(resolved, pages);
    assert_eq!(got, pages.map(|p| p as u8 ^ 0xA5).to_vec());
}
