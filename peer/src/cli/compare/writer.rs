//! The workloads of `peer compare`: a writer thread that writes 4 KiB pages at a set rate in a
//! pattern, into memory or through a file, and times every write. Rule: every detector's
//! writer and the untracked baseline run this same loop; only the target differs.

use rand::{Rng, SeedableRng};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Bytes of one write: a page.
pub const PAGE: usize = 4096;

/// Where a workload's pages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Pages chosen uniformly at random (a VM's RAM, a heap).
    Random,
    /// Pages one after another, wrapping at the end (a log, a streaming buffer).
    Sequential,
    /// 90% of the writes to a hot 1% of the pages, the rest anywhere (a cache).
    Hotset,
}

impl Pattern {
    pub const ALL: [Pattern; 3] = [Pattern::Random, Pattern::Sequential, Pattern::Hotset];

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Random => "random pages",
            Pattern::Sequential => "sequential",
            Pattern::Hotset => "hot set",
        }
    }
}

/// What a writer writes into.
pub enum Target {
    /// Stores into a mapping of `len` bytes at `ptr`: a shared mapping of the region file (hash),
    /// tracked memory (uffd), anonymous memory (the untracked baseline).
    Memory { ptr: *mut u8, len: usize },
    /// pwrite(2) to a file of `len` bytes: the region file (inotify), its FUSE mount (fuse),
    /// nbdfuse's file of the NBD export (nbd).
    File { file: std::fs::File, len: usize },
}

// SAFETY: `Memory` points into a mapping that whoever made the target keeps alive until the
// writer thread given it was joined; only that thread writes through it.
unsafe impl Send for Target {}

impl Target {
    fn len(&self) -> usize {
        match self {
            Target::Memory { len, .. } | Target::File { len, .. } => *len,
        }
    }

    fn write(&mut self, page: usize, buf: &[u8; PAGE]) -> std::io::Result<()> {
        let off = page * PAGE;
        match self {
            Target::Memory { ptr, len } => {
                assert!(off + PAGE <= *len, "page {page} is outside the region");
                // SAFETY: in bounds (checked above) of a live mapping only this thread writes.
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), ptr.add(off), PAGE) };
                Ok(())
            }
            Target::File { file, .. } => file.write_all_at(buf, off as u64),
        }
    }
}

/// What a writer did: when each write ended and how long it took, and its own CPU time.
#[derive(Default)]
pub struct Writes {
    pub ended: Vec<Instant>,
    pub took_ns: Vec<u64>,
    pub cpu: Duration,
    pub wall: Duration,
}

impl Writes {
    pub fn mean_ns(&self) -> f64 {
        if self.took_ns.is_empty() {
            return 0.0;
        }
        self.took_ns.iter().sum::<u64>() as f64 / self.took_ns.len() as f64
    }

    pub fn bytes(&self) -> u64 {
        (self.took_ns.len() * PAGE) as u64
    }

    /// When each write began and ended.
    pub fn spans(&self) -> impl Iterator<Item = (Instant, Instant)> + '_ {
        (self.ended.iter().zip(&self.took_ns))
            .map(|(&end, &ns)| (end - Duration::from_nanos(ns), end))
    }
}

/// Writes pages of `target` in `pattern` at `rate` bytes per second for `time` (no writes at all
/// for rate 0), stamping each page with a sequence number so that every write changes it. Runs
/// on the calling thread, which should be a thread of its own.
pub fn run(
    target: &mut Target,
    pattern: Pattern,
    rate: u64,
    time: Duration,
    seed: u64,
) -> std::io::Result<Writes> {
    let pages = target.len() / PAGE;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let hot = (pages / 100).max(1);
    let hot_at = rng.random_range(0..pages - hot + 1);
    let mut next = rng.random_range(0..pages);
    let mut buf = [0x5au8; PAGE];
    let per_sec = rate as f64 / PAGE as f64;
    let expected = (per_sec * time.as_secs_f64()) as usize + 1;
    let mut out = Writes {
        ended: Vec::with_capacity(expected),
        took_ns: Vec::with_capacity(expected),
        ..Writes::default()
    };
    let cpu = thread_cpu();
    let start = Instant::now();
    let mut seq = seed << 32;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= time {
            break;
        }
        let due = (per_sec * elapsed.as_secs_f64()) as usize;
        while out.took_ns.len() < due {
            let page = match pattern {
                Pattern::Random => rng.random_range(0..pages),
                Pattern::Sequential => {
                    next = (next + 1) % pages;
                    next
                }
                Pattern::Hotset if rng.random_ratio(9, 10) => hot_at + rng.random_range(0..hot),
                Pattern::Hotset => rng.random_range(0..pages),
            };
            seq += 1;
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            let t = Instant::now();
            target.write(page, &buf)?;
            let end = Instant::now();
            out.took_ns.push((end - t).as_nanos() as u64);
            out.ended.push(end);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    out.wall = start.elapsed();
    out.cpu = thread_cpu().saturating_sub(cpu);
    Ok(out)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time of this process, all threads.
pub fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time (user + system) of another process so far, from /proc/PID/stat; zero once it is gone.
pub fn child_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // proc(5): fields 14 and 15 (utime, stime, in clock ticks) follow the parenthesised command
    // name, which may itself hold spaces or parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let mut fields = rest.split_whitespace().skip(11);
    let ticks: u64 = (0..2)
        .filter_map(|_| fields.next()?.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}
