//! The `inotify` and `fuse` detectors against what they replace, in the same run:
//! 1. one collection of an idle 1 GiB file: `hash` (baseline: it hashes every chunk) against
//!    `inotify` (no event: it reads the queue and looks for writable mappings in /proc);
//! 2. one collection after a 1% change made with pwrite(2) (64 scattered 64 KiB chunks): both
//!    hash the whole file, `inotify` because an event came;
//! 3. sequential pwrite(2) of 256 MiB in 1 MiB blocks, then fsync: to the file itself (baseline)
//!    and through the `fuse` mount of it (every write forwarded to the export and marked).
//!
//! Run: `cargo bench -p memsync-benches --bench detectors` (DETECTORS_BENCH_MIB sets the file
//! size, default 1024; needs /dev/fuse and root for the mount).

use anyhow::Result;
use memsync_benches::{best_of, mibps};
use memsync_peer::detector::{ChangeDetector, HashDetector, InotifyDetector, Marks};
use memsync_peer::nbd::FileExport;
use memsync_peer::region::{Source, SourceFile};
use memsync_protocol::DirtySet;
use rand::RngCore;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<()> {
    memsync_benches::block_on(bench())
}

fn collect(d: &mut dyn ChangeDetector, known: &[u64]) -> u64 {
    let mut out = DirtySet::new(known.len() as u64);
    d.collect(known, &mut out).expect("collect");
    out.count()
}

/// pwrite(2) of `size` bytes of `to` in 1 MiB blocks, then fsync.
fn write_all(to: &std::path::Path, size: usize) -> Result<std::time::Duration> {
    let block = vec![3u8; 1 << 20];
    let f = std::fs::OpenOptions::new().write(true).open(to)?;
    let t = Instant::now();
    for off in (0..size).step_by(block.len()) {
        f.write_all_at(&block, off as u64)?;
    }
    f.sync_all()?;
    Ok(t.elapsed())
}

async fn bench() -> Result<()> {
    let size = std::env::var("DETECTORS_BENCH_MIB").map_or(1024, |v| v.parse().unwrap()) << 20;
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("region");
    let mut v = vec![0u8; size];
    rand::rng().fill_bytes(&mut v);
    std::fs::write(&path, &v)?;
    drop(v);
    let source: Arc<dyn Source> = Arc::new(SourceFile::open(&path, 16)?);
    let known = source.hashes();
    let n = known.len() as u64;
    let mut hash = HashDetector::new(source.clone());
    let mut inotify = InotifyDetector::new(source.clone(), &path)?;
    collect(&mut inotify, &known); // its first collection hashes: the file may predate the watch
    println!(
        "# detectors, {} MiB file, {} cores",
        size >> 20,
        memsync_benches::cores()
    );

    let (h_idle, _) = best_of(5, || collect(&mut hash, &known));
    let (i_idle, _) = best_of(5, || collect(&mut inotify, &known));
    println!(
        "idle collection: hash {h_idle:.1?} (baseline), inotify {i_idle:.1?} = {:.4}× of hash",
        i_idle.as_secs_f64() / h_idle.as_secs_f64()
    );

    let file = std::fs::OpenOptions::new().write(true).open(&path)?;
    let chunk = vec![7u8; 1 << 16];
    let changed = n / 100;
    let mut h_changed = std::time::Duration::MAX;
    let mut i_changed = std::time::Duration::MAX;
    for round in 0..3u8 {
        for k in 0..changed {
            let mut c = chunk.clone();
            c[0] = round;
            file.write_all_at(&c, (k * 97 % n) << 16)?;
        }
        let t = Instant::now();
        let found = collect(&mut inotify, &known);
        i_changed = i_changed.min(t.elapsed());
        assert!(found >= changed, "inotify found {found} of {changed}");
        let t = Instant::now();
        collect(&mut hash, &known);
        h_changed = h_changed.min(t.elapsed());
    }
    println!(
        "collection after a 1% pwrite: hash {h_changed:.1?} (baseline), inotify {i_changed:.1?} = {:.2}×",
        i_changed.as_secs_f64() / h_changed.as_secs_f64()
    );

    let write_size = (256usize << 20).min(size);
    let marks = Marks::new(source.geometry());
    let export = Arc::new(FileExport::open(&path, marks.clone(), false)?);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let mount =
        memsync_peer::fuse::mount(&mnt, "region", export, tokio::runtime::Handle::current())?;
    // Alternated, best of three each, so neither side gets the page cache's warm-up alone.
    let (mut direct, mut through) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..3 {
        direct = direct.min(write_all(&path, write_size)?);
        let p = mnt.join("region");
        through =
            through.min(tokio::task::spawn_blocking(move || write_all(&p, write_size)).await??);
    }
    drop(mount);
    println!(
        "pwrite of {} MiB + fsync: to the file {:.0} MiB/s (baseline), through the fuse mount {:.0} MiB/s = {:.2}×; {} writes marked (3 runs)",
        write_size >> 20,
        mibps(write_size as u64, direct),
        mibps(write_size as u64, through),
        direct.as_secs_f64() / through.as_secs_f64(),
        marks.position()
    );
    Ok(())
}
