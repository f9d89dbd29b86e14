//! userfaultfd figures, no `peer` process needed:
//! 1. Dirty collection over a 1 GiB resident region with 1% of its pages written (5 rounds,
//!    medians): one
//!    WP_ASYNC + PAGEMAP_SCAN walk (scan and re-protect) against the `hash` detector's work
//!    (`region::hash_all` with every core, then comparing with the previous hashes).
//! 2. A cold lazy region over loopback QUIC (an in-process `serve` holding a 1 GiB image):
//!    first-touch latency of pages whose chunk has not arrived (p50/p99), and sequential read
//!    throughput of a fresh cold mount.
//!
//! Run: `cargo bench -p memsync-benches --bench uffd` (root, or vm.unprivileged_userfaultfd=1
//! for part 2). `UFFD_BENCH_MIB` changes the region size.

use memsync_benches::{cores, cpu_time, raw_quinn};
use memsync_peer::net::identity::{Fingerprint, Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::roles::lazy::{LazyOptions, LazyRegion};
use memsync_peer::roles::owner::SyncOptions;
use memsync_peer::uffd::pagemap::WriteTracker;
use memsync_peer::uffd::Mapping;
use memsync_protocol::Geometry;
use rand::{Rng, RngCore, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;

fn main() {
    let size: usize = std::env::var("UFFD_BENCH_MIB").map_or(1024, |v| v.parse().unwrap()) << 20;
    // UFFD_BENCH_ONLY=dirty or =lazy runs one half; =pull only the lazy pull's throughput.
    if let Ok(dir) = std::env::var("UFFD_BENCH_SERVE") {
        return serve_child(dir);
    }
    let only = std::env::var("UFFD_BENCH_ONLY").unwrap_or_default();
    if only != "lazy" && only != "pull" {
        dirty_collection(size);
    }
    if only != "dirty" {
        lazy(size);
    }
}

fn dirty_collection(size: usize) {
    let pages = size / PAGE;
    let m = Mapping::anonymous(size).unwrap();
    // SAFETY: a fresh mapping of `size` bytes owned by this function.
    let mem = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), size) };
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(mem);
    let geom = Geometry::new(size as u64, 16).unwrap();

    let uffd = Arc::new(WriteTracker::open_uffd().expect("uffd write tracking"));
    let t = Instant::now();
    let mut tracker = WriteTracker::start_self(uffd, m.addr(), size as u64).unwrap();
    let t_protect = t.elapsed();
    let known = memsync_peer::region::hash_all(&geom, mem);

    // Each detector in its own steady state, five rounds each: 1% of the pages (a fresh random
    // set each round) written once at a random offset, then the detector's work for the round.
    // Medians, since the machine is shared. The uffd rounds run first and alone: a hash pass
    // between them would evict the page tables from the caches, which a uffd detector in
    // production never does; that cold case is measured separately below.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let n = pages / 100;
    let mut write_round = |mem: &mut [u8]| {
        let mut written = std::collections::BTreeSet::new();
        while written.len() < n {
            let p = rng.random_range(0..pages);
            written.insert(p);
            mem[p * PAGE + rng.random_range(0..PAGE)] ^= 0x5A;
        }
    };
    let (mut t_uffd, mut t_hash, mut t_idle, mut t_cold) = (vec![], vec![], vec![], vec![]);
    let (mut cpu_uffd, mut cpu_hash) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        write_round(mem);
        // uffd: one PAGEMAP_SCAN walk that reports and re-protects.
        let (t, c) = (Instant::now(), cpu_time());
        let mut found = 0usize;
        tracker
            .collect(|r| found += ((r.end - r.start) as usize) / PAGE)
            .unwrap();
        t_uffd.push(t.elapsed());
        cpu_uffd.push(cpu_time() - c);
        assert_eq!(found, n, "the scan must report exactly the pages written");
        // A uffd round with nothing written: the floor.
        let t = Instant::now();
        tracker.collect(|_| found += 1).unwrap();
        t_idle.push(t.elapsed());
        assert_eq!(found, n, "nothing was written since the last scan");
    }
    let mut known = known;
    let mut differing = 0;
    for _ in 0..5 {
        write_round(mem);
        // hash: what the hash detector does each round.
        let (t, c) = (Instant::now(), cpu_time());
        let now = memsync_peer::region::hash_all(&geom, mem);
        differing = now.iter().zip(&known).filter(|(a, b)| a != b).count();
        t_hash.push(t.elapsed());
        cpu_hash.push(cpu_time() - c);
        known = now;
        assert!(differing > 0);
        // uffd right after a pass over the whole region: page tables cold in the caches.
        let t = Instant::now();
        let mut found = 0usize;
        tracker
            .collect(|r| found += ((r.end - r.start) as usize) / PAGE)
            .unwrap();
        t_cold.push(t.elapsed());
        assert_eq!(found, n);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[0])
    };
    let ((u, ub), (h, hb), (i, _)) = (med(&mut t_uffd), med(&mut t_hash), med(&mut t_idle));
    let (cold, _) = med(&mut t_cold);
    let ((cu, _), (ch, _)) = (med(&mut cpu_uffd), med(&mut cpu_hash));

    let gib = size as f64 / (1 << 30) as f64;
    println!(
        "dirty collection, {gib:.2} GiB anonymous resident, {n} of {pages} pages written (1%), 64 KiB chunks, {} cores:",
        cores()
    );
    println!(
        "  write-protect whole region (once, at start): {:8.2} ms",
        ms(t_protect)
    );
    println!(
        "  uffd PAGEMAP_SCAN (scan + re-protect):       {:8.3} ms median, {:.3} best",
        ms(u),
        ms(ub)
    );
    println!(
        "  uffd PAGEMAP_SCAN, nothing written:          {:8.3} ms median",
        ms(i)
    );
    println!(
        "  uffd, page tables cold (after a hash pass):  {:8.3} ms median ({:.0}x)",
        ms(cold),
        h.as_secs_f64() / cold.as_secs_f64()
    );
    println!(
        "  hash_all + compare (~{differing} chunks differ):    {:8.2} ms median, {:.2} best",
        ms(h),
        ms(hb)
    );
    println!(
        "  ratio hash / uffd:                           {:8.0}x median, {:.0}x best vs best",
        h.as_secs_f64() / u.as_secs_f64(),
        hb.as_secs_f64() / ub.as_secs_f64()
    );
    println!(
        "  CPU time (all threads): uffd {:.3} ms, hash {:.2} ms: {:.0}x (hash uses every core)",
        ms(cu),
        ms(ch),
        ch.as_secs_f64() / cu.as_secs_f64().max(1e-6)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn lazy(size: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut img = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut img);
    write_synced(&dir.path().join("img"), &img);
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    // A `serve` peer holding the image, whose mounts push at `max_rate` bytes/s at most.
    let serve = |max_rate: Option<u64>| {
        let server = rt.block_on(async { PeerEndpoint::loopback(&b, a.fingerprint()).unwrap() });
        let addr = server.local_addr();
        let d = memsync_peer::region::ReplicaDir::open(dir.path()).unwrap();
        let opts = SyncOptions {
            max_rate,
            ..SyncOptions::default()
        };
        let policy = memsync_peer::roles::replica::Policy::load(d.path(), vec![], vec![]).unwrap();
        rt.spawn(async move {
            memsync_peer::roles::replica::serve_with(&server, d, policy, opts.into()).await
        });
        addr
    };
    let addr = serve(None);
    let ep = rt.block_on(async {
        PeerEndpoint::client_for(addr, &a, TrustSet::new([b.fingerprint()])).unwrap()
    });
    let mount = || {
        Arc::new(
            rt.block_on(LazyRegion::mount(&ep, addr, "img", LazyOptions::default()))
                .unwrap(),
        )
    };

    // Throughput, `reps` rounds (UFFD_BENCH_REPS, default 3) of: the baseline (the same bytes
    // over one raw QUIC stream), the whole pull into a uffd region with nothing read, and a
    // sequential read of a fresh cold mount, 64 KiB at a time from a plain thread. Interleaved so
    // that every figure sees the same machine; medians, since it is shared.
    let reps: usize = std::env::var("UFFD_BENCH_REPS").map_or(3, |v| v.parse().unwrap());
    let mib = size as f64 / (1 << 20) as f64;
    let (mut raw, mut pull, mut seq) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_cpu, mut pull_cpu) = (Vec::new(), Vec::new());
    let mut last_seq = (0, 0, 0);
    for _ in 0..reps {
        let (t, cpu) = rt.block_on(raw_quinn(size as u64, &a, &b)).unwrap();
        raw.push(mib / t.as_secs_f64());
        raw_cpu.push(cpu.as_secs_f64() / (mib / 1024.0));

        let (t, cpu) = (Instant::now(), cpu_time());
        let r = mount();
        rt.block_on(r.complete()).unwrap();
        pull.push(mib / t.elapsed().as_secs_f64());
        pull_cpu.push((cpu_time() - cpu).as_secs_f64() / (mib / 1024.0));
        drop(r);

        // Once the connection is idle again.
        std::thread::sleep(Duration::from_millis(300));
        let r = mount();
        let t = Instant::now();
        let rr = r.clone();
        let sum = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut s = 0u64;
            for off in (0..size).step_by(65536) {
                buf.copy_from_slice(&rr.bytes()[off..off + 65536]);
                s = s.wrapping_add(buf[0] as u64);
            }
            s
        })
        .join()
        .unwrap();
        seq.push(mib / t.elapsed().as_secs_f64());
        std::hint::black_box(sum);
        let stats = r.stats();
        last_seq = (
            stats.faults.load(std::sync::atomic::Ordering::Relaxed),
            stats
                .readahead_chunks
                .load(std::sync::atomic::Ordering::Relaxed),
            r.lane_copies(),
        );
        drop(r);
        std::thread::sleep(Duration::from_millis(300));
    }
    let ratios = |v: &[f64]| {
        let r: Vec<String> = v
            .iter()
            .zip(&raw)
            .map(|(x, b)| format!("{:.2}", x / b))
            .collect();
        r.join(" ")
    };
    let raw_m = median(&raw);
    println!("lazy region over loopback QUIC, {mib:.0} MiB image, 64 KiB chunks, {reps} interleaved rounds (medians; per-round ratios in brackets):");
    println!(
        "  raw quinn, one stream (baseline): {raw_m:.0} MiB/s, {:.2} CPU-s per GiB",
        median(&raw_cpu)
    );
    println!(
        "  whole pull into a uffd region, nothing read: {:.0} MiB/s = {:.2}x raw [{}], {:.2} CPU-s per GiB = {:.2}x raw",
        median(&pull),
        median(&pull) / raw_m,
        ratios(&pull),
        median(&pull_cpu),
        median(&pull_cpu) / median(&raw_cpu)
    );
    println!(
        "  sequential read of a cold mount: {:.0} MiB/s = {:.2}x raw [{}] (last round: {} faults, {} chunks read ahead, {} lane copies)",
        median(&seq),
        median(&seq) / raw_m,
        ratios(&seq),
        last_seq.0,
        last_seq.1,
        last_seq.2
    );
    if std::env::var("UFFD_BENCH_ONLY").is_ok_and(|v| v == "pull") {
        return;
    }

    // First touches of pages whose chunk has not arrived, with the faulting page asked for
    // ahead of its chunk (FETCH_PART) and without. On a nearly idle link (the push held to
    // 1 MiB/s) they show the fetch path's own latency, to compare with raw quinn's round trips
    // of a 4 KiB and a 64 KiB reply; during the full-speed pull they show the queues the urgent
    // copies wait in, which a push held to a quarter of raw quinn's rate (`serve
    // --mount-max-rate`) keeps short.
    let idle_at = serve(Some(1 << 20));
    let quarter = (raw_m / 4.0) as u64;
    let quarter_at = serve(Some(quarter << 20));
    let (child, child_addr, child_fp) = serve_in_child(dir.path(), &a, 1 << 20);
    let child_ep = rt.block_on(async {
        PeerEndpoint::client_for(child_addr, &a, TrustSet::new([child_fp])).unwrap()
    });
    let lazy = |fetch_parts| LazyOptions {
        fetch_parts,
        ..LazyOptions::default()
    };
    let cases: Vec<(String, Touches)> = vec![
        (
            "idle link, with parts".into(),
            touches(&rt, &ep, idle_at, &img, lazy(true), false),
        ),
        (
            "idle link, whole chunks".into(),
            touches(&rt, &ep, idle_at, &img, lazy(false), false),
        ),
        (
            "idle link, with parts, owner in its own process".into(),
            touches(&rt, &child_ep, child_addr, &img, lazy(true), false),
        ),
        (
            "during the full-speed pull, with parts".into(),
            touches(&rt, &ep, addr, &img, lazy(true), true),
        ),
        (
            "during the full-speed pull, whole chunks".into(),
            touches(&rt, &ep, addr, &img, lazy(false), true),
        ),
        (
            format!("push held to {quarter} MiB/s (raw / 4), with parts"),
            touches(&rt, &ep, quarter_at, &img, lazy(true), true),
        ),
    ];
    drop(child);
    for (busy, reply) in [
        (false, 4096),
        (false, 1 << 16),
        (true, 4096),
        (true, 1 << 16),
    ] {
        let t = memsync_benches::raw_quinn_round_trips(&rt, &a, &b, 1000, reply, busy).unwrap();
        println!(
            "  raw quinn round trip, 8-byte request, {reply} B reply on a priority stream, {}: p50 {:.0} us, p99 {:.0} us",
            if busy { "during a bulk push" } else { "idle link" },
            us(pct(&t, 0.5)),
            us(pct(&t, 0.99))
        );
    }
    for (what, t) in &cases {
        println!(
            "  first touch of a page not yet here, {what}: p50 {:.0} us, p99 {:.0} us ({} touches); first touch of a fresh mount (20 mounts) p50 {:.0} us, p99 {:.0} us",
            us(pct(&t.during, 0.5)),
            us(pct(&t.during, 0.99)),
            t.during.len(),
            us(pct(&t.fresh, 0.5)),
            us(pct(&t.fresh, 0.99)),
        );
    }
}

/// First-touch latencies of pages whose chunk is not present: `during`, random chunks of one
/// mount (a page at a random offset in each, 1 ms apart) until 2000 touches or 90% arrived, and
/// `fresh`, one touch right after each of 20 new mounts.
struct Touches {
    during: Vec<Duration>,
    fresh: Vec<Duration>,
}

/// [`Touches`] of the image `img` served at `addr`; with `complete`, the mount then waits for
/// the whole pull and checks every byte (skipped when the push is held back to a trickle).
fn touches(
    rt: &tokio::runtime::Runtime,
    ep: &PeerEndpoint,
    addr: std::net::SocketAddr,
    img: &[u8],
    opts: LazyOptions,
    complete: bool,
) -> Touches {
    let mount = || {
        Arc::new(
            rt.block_on(LazyRegion::mount(ep, addr, "img", opts.clone()))
                .unwrap(),
        )
    };
    // SAFETY (both reads below): inside the mapping; the read waits for the chunk.
    let touch = |r: &LazyRegion, off: usize| unsafe { r.as_ptr().add(off).read_volatile() };
    let chunks = (img.len() >> 16) as u64;
    let r = mount();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut during = Vec::new();
    while r.missing() > chunks / 10 && during.len() < 2000 {
        let c = rng.random_range(0..chunks);
        if r.is_present(c) {
            continue;
        }
        let off = ((c as usize) << 16) + rng.random_range(0..1 << 16);
        let t = Instant::now();
        let v = touch(&r, off);
        during.push(t.elapsed());
        assert_eq!(v, img[off]);
        std::thread::sleep(Duration::from_millis(1));
    }
    if complete {
        rt.block_on(r.complete()).unwrap();
        assert!(r.bytes() == img);
    }
    drop(r);
    // As a restored VM touches its memory: one page far from the start (the pull begins at
    // chunk 0) of each fresh mount. Each mount starts on an idle connection: the previous
    // mount's push, already in flight when it was dropped, has drained.
    let mut fresh = Vec::new();
    for k in 0..20u64 {
        std::thread::sleep(Duration::from_millis(300));
        let r = mount();
        let off = ((chunks - 1 - k * 97 % (chunks / 2)) as usize) << 16;
        let t = Instant::now();
        let v = touch(&r, off);
        fresh.push(t.elapsed());
        assert_eq!(v, img[off]);
    }
    during.sort();
    fresh.sort();
    Touches { during, fresh }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A `serve` peer in a child process (this bench binary, re-executed) holding `dir`, trusting
/// `client`, pushing its mounts at `max_rate` bytes/s at most. Returns the child (killed on drop), its address and its fingerprint.
fn serve_in_child(
    dir: &std::path::Path,
    client: &Identity,
    max_rate: u64,
) -> (Child, std::net::SocketAddr, Fingerprint) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("UFFD_BENCH_SERVE", dir)
        .env("UFFD_BENCH_TRUST", client.fingerprint().to_string())
        .env("UFFD_BENCH_RATE", max_rate.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let (addr, fp) = line
        .trim()
        .split_once(' ')
        .expect("child prints ADDR FINGERPRINT");
    (
        Child(child),
        addr.parse().unwrap(),
        Fingerprint::parse(fp).unwrap(),
    )
}

/// Writes `bytes` to `path` and waits for the disk: writeback of a fresh 1 GiB file would
/// otherwise compete with the first measurements for the CPU.
fn write_synced(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    f.sync_all().unwrap();
}

/// Kills the child process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child side of [`serve_in_child`].
fn serve_child(dir: String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let id = Identity::generate().unwrap();
        let trust = Fingerprint::parse(&std::env::var("UFFD_BENCH_TRUST").unwrap()).unwrap();
        let ep = PeerEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &id,
            TrustSet::new([trust]),
            true,
        )
        .unwrap();
        println!("{} {}", ep.local_addr(), id.fingerprint());
        let opts = SyncOptions {
            max_rate: Some(std::env::var("UFFD_BENCH_RATE").unwrap().parse().unwrap()),
            ..SyncOptions::default()
        };
        let dir = memsync_peer::region::ReplicaDir::open(std::path::Path::new(&dir)).unwrap();
        let policy =
            memsync_peer::roles::replica::Policy::load(dir.path(), vec![], vec![]).unwrap();
        memsync_peer::roles::replica::serve_with(&ep, dir, policy, opts.into()).await
    });
}
