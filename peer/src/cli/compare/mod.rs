//! `peer compare`: every change detector this machine supports, measured on a matrix of workloads
//! against a real replica (a `peer serve` child process on loopback QUIC), then a table, a report
//! with plots and a recommendation per use case drawn from the figures. Rule: each figure comes
//! from this run, each against a baseline of this run (untracked memory for the writer).

mod report;
mod writer;

use crate::units;
use crate::Detector;
use anyhow::{bail, Context, Result};
use memsync_peer::net::identity::{Fingerprint, Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::roles::owner::{SyncOptions, SyncRegion, SyncStats};
use report::{Cell, Idle, Lag, Run, Verified};
use std::any::Any;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use writer::{Pattern, Target, PAGE};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Under a minute: one 64 MiB region, 16 MiB/s, one second per workload.
    #[arg(long)]
    quick: bool,
    /// Region size (or 64MiB, 1GiB), repeatable [default: 64 MiB with --quick, else 256 MiB and
    /// 1 GiB].
    #[arg(long = "size", value_name = "BYTES", value_parser = units::bytes)]
    sizes: Vec<u64>,
    /// Write rate in MiB/s, repeatable [default: 16 with --quick, else 4, 16 and 64].
    #[arg(long = "rate", value_name = "MIB", value_parser = units::mib_per_sec)]
    rates: Vec<u64>,
    /// Write patterns, repeatable [default: all three].
    #[arg(long = "pattern", value_enum)]
    patterns: Vec<Pattern>,
    /// How long each workload writes, in milliseconds (or 2s) [default: 1 s with --quick, else
    /// 5 s].
    #[arg(long, value_name = "MS", value_parser = units::millis)]
    time: Option<u64>,
    /// Only these detectors, repeatable [default: every one this machine supports].
    #[arg(long = "detector", value_enum)]
    detectors: Vec<Detector>,
    /// Milliseconds between detector runs (or a duration: 250ms, 1s).
    #[arg(long, default_value_t = 100, value_name = "MS", value_parser = units::millis)]
    interval: u64,
    /// Chunk size in bytes (or 64KiB, 1MiB): a power of two from 4 KiB to 4 MiB.
    #[arg(long, default_value_t = 65536, value_name = "N", value_parser = units::bytes)]
    chunk_size: u64,
    /// Directory the report goes to (report.md and its SVG plots); created if absent.
    #[arg(long, value_name = "DIR", default_value = "memsync-compare")]
    out: PathBuf,
    /// Directory for the regions and the replica while it runs [default: a new one in $TMPDIR,
    /// removed at the end].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

pub const ALL: [Detector; 5] = [
    Detector::Hash,
    Detector::Uffd,
    Detector::Inotify,
    Detector::Fuse,
    Detector::Nbd,
];

pub fn name(d: Detector) -> &'static str {
    match d {
        Detector::Hash => "hash",
        Detector::Uffd => "uffd",
        Detector::Nbd => "nbd",
        Detector::Fuse => "fuse",
        Detector::Inotify => "inotify",
    }
}

/// How a detector's writer writes in this comparison.
pub fn writes_how(d: Detector) -> &'static str {
    match d {
        Detector::Hash => "stores into a shared mapping of the region file",
        Detector::Uffd => "stores into the tracked memory (memsync_peer::embed)",
        Detector::Nbd => "pwrite(2) to nbdfuse's file of the region's NBD export",
        Detector::Fuse => "pwrite(2) to the region's file in the FUSE mount",
        Detector::Inotify => "pwrite(2) to the region file",
    }
}

pub async fn run(a: CompareArgs) -> Result<()> {
    let command = std::iter::once("peer".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let shift = crate::chunk_shift(a.chunk_size)?;
    let sizes = match (&a.sizes[..], a.quick) {
        ([], true) => vec![64 << 20],
        ([], false) => vec![256 << 20, 1 << 30],
        (s, _) => s.to_vec(),
    };
    for &s in &sizes {
        if s < a.chunk_size || s % PAGE as u64 != 0 {
            bail!(
                "--size {s}: a region here is a whole number of 4 KiB pages and at least a chunk"
            );
        }
    }
    let rates: Vec<u64> = match (&a.rates[..], a.quick) {
        ([], true) => vec![16],
        ([], false) => vec![4, 16, 64],
        (r, _) => r.to_vec(),
    }
    .into_iter()
    .map(|mib| mib << 20)
    .collect();
    let patterns = match &a.patterns[..] {
        [] => Pattern::ALL.to_vec(),
        p => p.to_vec(),
    };
    let time = Duration::from_millis(a.time.unwrap_or(if a.quick { 1000 } else { 5000 }).max(100));
    let interval = Duration::from_millis(a.interval.max(1));
    let asked = match &a.detectors[..] {
        [] => ALL.to_vec(),
        d => d.to_vec(),
    };

    let (work, _cleanup) = match &a.work_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("memsync-compare-")
                .tempdir()
                .context("creating a work directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;

    let mut supported = Vec::new();
    let mut unsupported = Vec::new();
    for d in asked {
        match support(d) {
            Ok(()) => supported.push(d),
            Err(why) => {
                tracing::warn!("{}: not measured: {why}", name(d));
                unsupported.push((name(d), why));
            }
        }
    }

    let me = Identity::generate()?;
    let replica = Replica::start(&work, me.fingerprint())?;
    let ep = Arc::new(PeerEndpoint::client_for(
        replica.addr,
        &me,
        TrustSet::new([replica.fp]),
    )?);

    let per_size =
        supported.len() * (1 + rates.len() * patterns.len()) + rates.len() * patterns.len();
    let bar = indicatif::ProgressBar::new((sizes.len() * per_size) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("template"),
    );
    let mut run = Run {
        command,
        sizes: sizes.clone(),
        rates: rates.clone(),
        time,
        interval,
        chunk_size: a.chunk_size,
        supported: supported
            .iter()
            .map(|&d| (name(d), writes_how(d)))
            .collect(),
        unsupported,
        ..Run::default()
    };
    let m = Measure {
        interval,
        time,
        replica: &replica,
    };
    // Interrupted (Ctrl-C, SIGTERM): what the loop holds is dropped, so its mounts, bridges and
    // the replica end with it.
    let measured = async {
        for &size in &sizes {
            // The writer's baseline: the same writes into untracked anonymous memory.
            let mut base = memmap2::MmapMut::map_anon(size as usize).context("mapping memory")?;
            base.fill(1);
            let mut baselines = Vec::new();
            for &rate in &rates {
                for &p in &patterns {
                    bar.set_message(format!("untracked memory · {} · {}", p.name(), mibs(rate)));
                    let target = Target::Memory {
                        ptr: base.as_mut_ptr(),
                        len: base.len(),
                    };
                    let t = time.min(Duration::from_secs(1));
                    let (_, w) = write(target, p, rate, t, 1).await?;
                    baselines.push(((p, rate), w.mean_ns()));
                    bar.inc(1);
                }
            }
            for &d in &supported {
                bar.set_message(format!("{} · {} MiB: setting up", name(d), size >> 20));
                let subject = Subject::open(d, &work, size, shift, &replica)
                    .await
                    .with_context(|| format!("setting up the {} detector", name(d)))?;
                let base_of = |p, r| {
                    baselines
                        .iter()
                        .find(|(k, _)| *k == (p, r))
                        .map_or(0.0, |&(_, ns)| ns)
                };
                match m
                    .detector(&ep, subject, size, &rates, &patterns, &bar, base_of)
                    .await
                {
                    Ok((idle, cells, verified)) => {
                        run.idle.push(idle);
                        run.cells.extend(cells);
                        run.verified.push(verified);
                    }
                    Err(e) => {
                        bar.inc(per_size as u64);
                        let e = format!("{e:#}");
                        tracing::error!("{} at {} MiB: {e}", name(d), size >> 20);
                        run.failed.push((name(d), size, e));
                    }
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = measured => r?,
        _ = crate::stop_signal() => bail!("interrupted"),
    }
    bar.finish_and_clear();
    drop(replica);
    print!("{}", report::text(&run));
    report::write(&run, &a.out)?;
    println!("report: {}", a.out.join(report::REPORT).display());
    if !run.failed.is_empty() || run.verified.iter().any(|v| v.differs.is_some()) {
        bail!("some measurements failed or a replica differs; the report says which");
    }
    Ok(())
}

fn mibs(rate: u64) -> String {
    format!("{} MiB/s", rate >> 20)
}

/// Why `d` cannot be measured here, if it cannot.
fn support(d: Detector) -> Result<(), String> {
    match d {
        Detector::Hash | Detector::Inotify => Ok(()),
        Detector::Uffd => memsync_peer::uffd::Probe::run()
            .require_write_tracking()
            .map_err(|e| e.to_string()),
        Detector::Fuse if !Path::new("/dev/fuse").exists() => {
            Err("/dev/fuse is absent (load the fuse module)".into())
        }
        Detector::Fuse => Ok(()),
        Detector::Nbd => {
            if !Path::new("/dev/fuse").exists() {
                return Err("its writer goes through nbdfuse, and /dev/fuse is absent".into());
            }
            match Command::new("nbdfuse").arg("--version").output() {
                Ok(o) if o.status.success() => Ok(()),
                _ => Err("its writer goes through nbdfuse (from libnbd; Debian: libnbd-bin), which is not installed".into()),
            }
        }
    }
}

/// The replica: `peer serve` in a child process, on a loopback port, trusting this process.
struct Replica {
    child: Child,
    addr: SocketAddr,
    fp: Fingerprint,
    dir: PathBuf,
}

impl Replica {
    fn start(work: &Path, owner: Fingerprint) -> Result<Replica> {
        let id_dir = work.join("replica-id");
        let fp = Identity::load_or_create(&id_dir)?.fingerprint();
        let dir = work.join("replicas");
        std::fs::create_dir_all(&dir)?;
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = work.join("serve.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .arg("--dir")
            .arg(&dir)
            .arg("--identity")
            .arg(&id_dir)
            .args(["--trust", &owner.to_string()])
            .arg("--control")
            .arg(work.join("serve.sock"))
            .env("MEMSYNC_LOG", "info")
            .env("MEMSYNC_CONFIG_NONE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .dies_with_parent()
            .spawn()
            .context("starting `peer serve` for the replica")?;
        let mut r = Replica {
            child,
            addr,
            fp,
            dir,
        };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("serving replicas") {
                return Ok(r);
            }
            if r.child.try_wait()?.is_some() || Instant::now() > until {
                bail!("the replica's `peer serve` did not start: {}", log.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn cpu(&self) -> Duration {
        writer::child_cpu(self.child.id())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One detector set up on one region: the owner's region, the writer's target, and what must live
/// as long as they do.
struct Subject {
    detector: Detector,
    name: String,
    region: SyncRegion,
    target: Target,
    /// Where the region's bytes are, for the final check against the replica.
    held: Held,
    bridge: Bridge,
    keep: Vec<Box<dyn Any>>,
}

/// A process the writes go through (nbdfuse), whose CPU counts as the detector's; killed when
/// dropped.
struct Bridge(Option<Child>);

impl Bridge {
    fn cpu(&self) -> Duration {
        self.0
            .as_ref()
            .map_or(Duration::ZERO, |c| writer::child_cpu(c.id()))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(b) = &mut self.0 {
            let _ = b.kill();
            let _ = b.wait();
        }
    }
}

enum Held {
    File(PathBuf),
    Memory(memsync_peer::embed::TrackedRegion),
}

impl Subject {
    async fn open(
        d: Detector,
        work: &Path,
        size: u64,
        shift: u8,
        replica: &Replica,
    ) -> Result<Subject> {
        let name = format!("{}-{}m", name(d), size >> 20);
        // A region left by an earlier run in --work-dir starts afresh.
        let _ = std::fs::remove_file(replica.dir.join(&name));
        let path = work.join(&name);
        if d != Detector::Uffd {
            random_file(&path, size)?;
        }
        let open_rw = |p: &Path| -> Result<Target> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?;
            Ok(Target::File {
                file,
                len: size as usize,
            })
        };
        let mut keep: Vec<Box<dyn Any>> = Vec::new();
        let mut bridge = Bridge(None);
        let (region, target, held) = match d {
            Detector::Hash => {
                let region = SyncRegion::open(&path, &name, shift)?;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)?;
                // SAFETY: the file is this run's own; the writer thread is its only writer.
                let mut map = unsafe { memmap2::MmapMut::map_mut(&f)? };
                let target = Target::Memory {
                    ptr: map.as_mut_ptr(),
                    len: map.len(),
                };
                keep.push(Box::new(map));
                (region, target, Held::File(path))
            }
            Detector::Inotify => {
                let region = SyncRegion::open_inotify(&path, &name, shift)?;
                (region, open_rw(&path)?, Held::File(path))
            }
            Detector::Fuse => {
                let at = work.join(format!("{name}.fuse"));
                std::fs::create_dir_all(&at)?;
                let (region, _export, mount) =
                    crate::serve_fuse_region(&path, &name, shift, &at, false)?;
                keep.push(Box::new(mount));
                (region, open_rw(&at.join(&name))?, Held::File(path))
            }
            Detector::Nbd => {
                let sock = work.join(format!("{name}.nbd"));
                let listen = memsync_peer::nbd::Listen::Unix(sock.clone());
                let limits = memsync_peer::nbd::server::Limits::default();
                let (region, _export) =
                    crate::serve_nbd_region(&path, &name, shift, &listen, limits, false).await?;
                let at = work.join(format!("{name}.nbdfuse"));
                std::fs::create_dir_all(&at)?;
                let file = at.join(&name);
                let child = Command::new("nbdfuse")
                    .arg(&file)
                    .arg(format!("nbd+unix:///{name}?socket={}", sock.display()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .dies_with_parent()
                    .spawn()
                    .context("starting nbdfuse")?;
                bridge = Bridge(Some(child));
                let until = Instant::now() + Duration::from_secs(10);
                while !std::fs::metadata(&file).is_ok_and(|m| m.len() == size) {
                    if Instant::now() > until {
                        bail!("nbdfuse did not show the export at {}", file.display());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                keep.push(Box::new(Unmount(at)));
                (region, open_rw(&file)?, Held::File(path))
            }
            Detector::Uffd => {
                let mut mem =
                    memsync_peer::embed::TrackedRegion::with_chunk_shift(size as usize, shift)?;
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut mem[..]);
                let region = mem.sync_region(&name)?;
                let target = Target::Memory {
                    ptr: mem.as_mut_ptr(),
                    len: size as usize,
                };
                (region, target, Held::Memory(mem))
            }
        };
        Ok(Subject {
            detector: d,
            name,
            region,
            target,
            held,
            bridge,
            keep,
        })
    }
}

/// Unmounts nbdfuse's mount point when dropped (before nbdfuse is killed): umount(2) as root,
/// else fusermount3 -u.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::empty()).is_err() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Children that end with this process, however it ends (kill -9 included): prctl(2)
/// PR_SET_PDEATHSIG.
trait DiesWithParent {
    fn dies_with_parent(&mut self) -> &mut Self;
}

impl DiesWithParent for Command {
    fn dies_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        let kill = rustix::process::Signal::KILL;
        // SAFETY: between fork and exec the closure makes one system call and allocates nothing.
        unsafe {
            self.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(kill))
                    .map_err(std::io::Error::from)
            })
        }
    }
}

fn random_file(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Runs the writer on a thread of its own and gives the target back.
async fn write(
    mut target: Target,
    p: Pattern,
    rate: u64,
    time: Duration,
    seed: u64,
) -> Result<(Target, writer::Writes)> {
    let (target, w) = tokio::task::spawn_blocking(move || {
        let w = writer::run(&mut target, p, rate, time, seed);
        (target, w)
    })
    .await?;
    Ok((target, w.context("writing")?))
}

struct Measure<'a> {
    interval: Duration,
    time: Duration,
    replica: &'a Replica,
}

impl Measure<'_> {
    /// Syncs `s` to the replica, runs the idle and every write workload on it, and checks the
    /// replica byte for byte at the end.
    #[allow(clippy::too_many_arguments)]
    async fn detector(
        &self,
        ep: &Arc<PeerEndpoint>,
        s: Subject,
        size: u64,
        rates: &[u64],
        patterns: &[Pattern],
        bar: &indicatif::ProgressBar,
        base_of: impl Fn(Pattern, u64) -> f64,
    ) -> Result<(Idle, Vec<Cell>, Verified)> {
        let Subject {
            detector,
            name: region_name,
            region,
            mut target,
            held,
            bridge,
            keep,
        } = s;
        let stats = Arc::new(SyncStats::default());
        let opts = SyncOptions {
            interval: self.interval,
            reconnect_for: Duration::from_secs(5),
            ..SyncOptions::default()
        };
        let driver = {
            let (ep, stats, addr) = (ep.clone(), stats.clone(), self.replica.addr);
            tokio::spawn(async move {
                memsync_peer::roles::owner::run(&ep, addr, vec![region], &opts, stats).await
            })
        };
        let d = name(detector);
        bar.set_message(format!("{d} · {} MiB: first sync", size >> 20));
        self.settle(&stats, &driver, true, &mut Vec::new()).await?;

        let mut cells = Vec::new();
        let mut idle = None;
        let mut seed = 7;
        let workloads = std::iter::once((None, 0)).chain(
            rates
                .iter()
                .flat_map(|&r| patterns.iter().map(move |&p| (Some(p), r))),
        );
        for (pattern, rate) in workloads {
            seed += 1;
            bar.set_message(format!(
                "{d} · {} MiB · {}",
                size >> 20,
                match pattern {
                    Some(p) => format!("{} · {}", p.name(), mibs(rate)),
                    None => "idle".into(),
                }
            ));
            let cpu0 = writer::process_cpu() + bridge.cpu();
            let rep0 = self.replica.cpu();
            let sent0 = stats.bytes_sent.load(Relaxed);
            // The rounds of this workload, taken from the stats as they come (they keep only the
            // newest few thousand).
            stats.take_rounds();
            let acked0 = stats.rounds_acked.load(Relaxed);
            let mut log = Vec::new();
            let writing = write(
                target,
                pattern.unwrap_or(Pattern::Random),
                rate,
                self.time,
                seed,
            );
            tokio::pin!(writing);
            let (t, w) = loop {
                tokio::select! {
                    r = &mut writing => break r?,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => log.extend(stats.take_rounds()),
                }
            };
            target = t;
            let owner_cpu = (writer::process_cpu() + bridge.cpu())
                .saturating_sub(cpu0)
                .saturating_sub(w.cpu)
                .as_secs_f64()
                / w.wall.as_secs_f64();
            let replica_cpu =
                self.replica.cpu().saturating_sub(rep0).as_secs_f64() / w.wall.as_secs_f64();
            self.settle(&stats, &driver, false, &mut log).await?;
            log.extend(stats.take_rounds());
            if log.len() as u64 != stats.rounds_acked.load(Relaxed) - acked0 {
                bail!("rounds were acknowledged faster than they could be logged");
            }
            let wire = stats.bytes_sent.load(Relaxed) - sent0;
            bar.inc(1);
            let Some(pattern) = pattern else {
                idle = Some(Idle {
                    detector: d,
                    size,
                    owner_cpu,
                    replica_cpu,
                    wire,
                });
                continue;
            };
            let lag = Lag::of(w.spans(), &log);
            if lag.unacked > 0 {
                bail!(
                    "{} of {} writes ({}, {}) were never acknowledged",
                    lag.unacked,
                    w.ended.len(),
                    pattern.name(),
                    mibs(rate)
                );
            }
            cells.push(Cell {
                detector: d,
                size,
                pattern,
                rate,
                owner_cpu,
                replica_cpu,
                writes: w.ended.len() as u64,
                write_ns: w.mean_ns(),
                base_ns: base_of(pattern, rate),
                wire,
                changed: w.bytes(),
                written: w.bytes() as f64 / w.wall.as_secs_f64(),
                lag,
            });
        }
        bar.set_message(format!("{d} · {} MiB: checking the replica", size >> 20));
        let differs = tokio::task::block_in_place(|| {
            first_difference(&held, &self.replica.dir.join(&region_name), size)
        })?;
        driver.abort();
        let _ = driver.await;
        // The writer's target before what it points into; mounts before their bridge.
        drop(target);
        drop(held);
        drop(keep);
        drop(bridge);
        Ok((
            idle.expect("the idle workload runs first"),
            cells,
            Verified {
                detector: d,
                size,
                differs,
            },
        ))
    }

    /// Waits until every round begun is acknowledged and none began for a while (a few detector
    /// intervals): every write before the call has then reached the replica. `first`: wait for
    /// the first reconciliation too. The rounds acknowledged meanwhile go to `log`.
    async fn settle(
        &self,
        stats: &SyncStats,
        driver: &tokio::task::JoinHandle<Result<(), memsync_peer::roles::owner::SyncError>>,
        first: bool,
        log: &mut Vec<memsync_peer::roles::owner::AckedRound>,
    ) -> Result<()> {
        let quiet = (self.interval * 4).max(Duration::from_millis(300));
        let until = Instant::now() + Duration::from_secs(300);
        let mut last = (u64::MAX, Instant::now());
        loop {
            log.extend(stats.take_rounds());
            if driver.is_finished() {
                bail!("the sync ended early; its log says why");
            }
            let begun = stats.rounds_begun.load(Relaxed);
            let acked = stats.rounds_acked.load(Relaxed);
            if begun != last.0 {
                last = (begun, Instant::now());
            }
            let reconciled = !first || stats.reconciles.load(Relaxed) > 0;
            if reconciled && begun == acked && last.1.elapsed() >= quiet {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("the replica did not catch up within 5 minutes ({acked} of {begun} rounds acknowledged)");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The offset of the first 4 KiB page where the replica differs from the region, if any.
fn first_difference(held: &Held, replica: &Path, size: u64) -> Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let rep = std::fs::File::open(replica)
        .with_context(|| format!("opening the replica {}", replica.display()))?;
    if rep.metadata()?.len() != size {
        return Ok(Some(rep.metadata()?.len().min(size)));
    }
    let file = match held {
        Held::File(p) => Some(std::fs::File::open(p)?),
        Held::Memory(_) => None,
    };
    let step = 1 << 20;
    let (mut a, mut b) = (vec![0u8; step], vec![0u8; step]);
    for off in (0..size).step_by(step) {
        let n = (size - off).min(step as u64) as usize;
        rep.read_exact_at(&mut b[..n], off)?;
        let ours = match (&file, held) {
            (Some(f), _) => {
                f.read_exact_at(&mut a[..n], off)?;
                &a[..n]
            }
            (None, Held::Memory(m)) => &m[off as usize..off as usize + n],
            (None, Held::File(_)) => unreachable!("a file is opened above"),
        };
        if let Some(i) = (0..n)
            .step_by(PAGE)
            .find(|&i| ours[i..(i + PAGE).min(n)] != b[i..(i + PAGE).min(n)])
        {
            return Ok(Some(off + i as u64));
        }
    }
    Ok(None)
}
