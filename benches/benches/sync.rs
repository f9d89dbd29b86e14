//! End-to-end sync over loopback QUIC, against baselines measured in the same run:
//! 1. raw quinn: one stream carrying the region's size in 1 MiB writes (same endpoints and
//!    transport settings as memsync);
//! 2. full sync of a fresh region (`sync --once` path) vs (1);
//! 3. 1% of chunks rewritten while a continuous sync runs: bytes on the wire vs changed bytes, and
//!    time from the change to the replica's ACK;
//! 4. the same change pushed by `rsync --inplace` to a local rsync daemon (skipped if rsync is not
//!    installed), and memsync's cold resume (both sides rehash) for the same change.
//!
//! Run: `cargo bench -p memsync-benches --bench sync` (SYNC_BENCH_MIB sets the size, default 1024;
//! SYNC_BENCH_FULL_ONLY=1 stops after the full sync, for profiling).

use anyhow::{Context, Result};
use memsync_benches::{mibps, raw_quinn};
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::roles::owner::{SyncOptions, SyncRegion, SyncStats};
use rand::{Rng, RngCore};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 10;

fn main() -> Result<()> {
    memsync_benches::block_on(bench())
}

async fn bench() -> Result<()> {
    let size: usize = std::env::var("SYNC_BENCH_MIB").map_or(1024, |v| v.parse().unwrap()) << 20;
    let (a, b) = (Identity::generate()?, Identity::generate()?);
    let trust_a = TrustSet::new([a.fingerprint()]);
    let trust_b = TrustSet::new([b.fingerprint()]);

    // 1. Raw quinn.
    let (raw, _) = raw_quinn(size as u64, &a, &b).await?;
    println!(
        "raw quinn, 1 stream, {} MiB: {:.0} ms, {:.0} MiB/s (baseline)",
        size >> 20,
        raw.as_secs_f64() * 1e3,
        mibps(size as u64, raw)
    );

    // 2. Full sync of a fresh region.
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("region.bin");
    let replicas = tmp.path().join("replicas");
    std::fs::create_dir_all(&replicas)?;
    write_random(&src, size)?;
    let server = PeerEndpoint::bind("127.0.0.1:0".parse()?, &b, trust_a.clone(), true)?;
    let addr = server.local_addr();
    let dir = memsync_peer::region::ReplicaDir::open(&replicas)?;
    tokio::spawn(async move { memsync_peer::roles::replica::serve(&server, dir).await });
    let client = PeerEndpoint::client_for(addr, &a, trust_b.clone())?;
    let once = SyncOptions {
        once: true,
        ..SyncOptions::default()
    };
    let shift: u8 = std::env::var("SYNC_BENCH_SHIFT").map_or(16, |v| v.parse().unwrap());
    let t = Instant::now();
    let region = SyncRegion::open(&src, "region.bin", shift)?;
    let t_hash = t.elapsed();
    let stats = Arc::new(SyncStats::default());
    let t = Instant::now();
    memsync_peer::roles::owner::run(&client, addr, vec![region], &once, stats.clone()).await?;
    let full = t.elapsed();
    assert_identical(&src, &replicas.join("region.bin"))?;
    println!(
        "full sync, {} MiB: {:.0} ms, {:.0} MiB/s = {:.2}x raw quinn; wire bytes {:.4}x region; owner's initial hash {:.0} ms",
        size >> 20,
        full.as_secs_f64() * 1e3,
        mibps(size as u64, full),
        raw.as_secs_f64() / full.as_secs_f64(),
        stats.bytes_sent.load(Relaxed) as f64 / size as f64,
        t_hash.as_secs_f64() * 1e3
    );

    if std::env::var_os("SYNC_BENCH_FULL_ONLY").is_some() {
        return Ok(());
    }

    // 3. 1% of chunks rewritten under a running sync.
    let before_change = std::fs::read(&src)?;
    let stats = Arc::new(SyncStats::default());
    let continuous = SyncOptions {
        interval: Duration::from_millis(10),
        ..SyncOptions::default()
    };
    let region = SyncRegion::open(&src, "region.bin", 16)?;
    let live = {
        let (stats, client) = (
            stats.clone(),
            PeerEndpoint::client_for(addr, &a, trust_b.clone())?,
        );
        tokio::spawn(async move {
            memsync_peer::roles::owner::run(&client, addr, vec![region], &continuous, stats).await
        })
    };
    while stats.reconciles.load(Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked0, bytes0) = (
        stats.bytes_acked.load(Relaxed),
        stats.bytes_sent.load(Relaxed),
    );
    let changed = rewrite_percent(&src, 1.0)?;
    let changed_bytes = (changed * CHUNK) as u64;
    // Done when rounds holding every changed byte are acknowledged: the rewrite may straddle
    // detector runs, so the first acknowledged round can carry only part of it.
    let t = Instant::now();
    while stats.bytes_acked.load(Relaxed) - acked0 < changed_bytes {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let change_to_ack = t.elapsed();
    let wire = stats.bytes_sent.load(Relaxed) - bytes0;
    assert_identical(&src, &replicas.join("region.bin"))?;
    live.abort();
    println!(
        "1% rewritten ({changed} chunks, {} MiB): change->ack {:.1} ms (detector interval 10 ms, detect->ack {:.1} ms); wire bytes {:.4}x changed bytes",
        changed_bytes >> 20,
        change_to_ack.as_secs_f64() * 1e3,
        stats.last_lag_us.load(Relaxed) as f64 / 1e3,
        wire as f64 / changed_bytes as f64
    );

    // 4. The same kind of change pushed by rsync to a local daemon, and by a cold memsync resume.
    let rsync_dir = tmp.path().join("rsync");
    std::fs::create_dir_all(&rsync_dir)?;
    std::fs::write(rsync_dir.join("region.bin"), &before_change)?;
    drop(before_change);
    match rsync_push(tmp.path(), &src, &rsync_dir).await {
        Ok(t_rsync) => println!(
            "rsync --inplace to a local daemon, same change: {:.0} ms; memsync change->ack is {:.1}x faster",
            t_rsync.as_secs_f64() * 1e3,
            t_rsync.as_secs_f64() / change_to_ack.as_secs_f64()
        ),
        Err(e) => println!("rsync baseline skipped: {e:#}"),
    }
    let changed = rewrite_percent(&src, 1.0)?;
    let stats = Arc::new(SyncStats::default());
    let t = Instant::now();
    let region = SyncRegion::open(&src, "region.bin", 16)?;
    memsync_peer::roles::owner::run(&client, addr, vec![region], &once, stats.clone()).await?;
    let cold = t.elapsed();
    assert_identical(&src, &replicas.join("region.bin"))?;
    println!(
        "cold resume after 1% rewritten ({changed} chunks; both sides rehash {} MiB): {:.0} ms, wire bytes {:.4}x changed bytes",
        size >> 20,
        cold.as_secs_f64() * 1e3,
        stats.bytes_sent.load(Relaxed) as f64 / (changed * CHUNK) as f64
    );
    Ok(())
}

fn write_random(path: &Path, size: usize) -> Result<()> {
    let mut v = vec![0u8; size];
    rand::rng().fill_bytes(&mut v);
    std::fs::write(path, v)?;
    Ok(())
}

/// Rewrites `percent`% of the 64 KiB chunks with random bytes through a shared mapping; returns
/// how many distinct chunks changed.
fn rewrite_percent(path: &Path, percent: f64) -> Result<usize> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    // SAFETY: the benchmark is the only writer; the owner maps the file read-only.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
    let chunks = map.len() / CHUNK;
    let want = ((chunks as f64 * percent / 100.0) as usize).max(1);
    let mut rng = rand::rng();
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < want {
        picked.insert(rng.random_range(0..chunks));
    }
    for &c in &picked {
        rng.fill_bytes(&mut map[c * CHUNK..(c + 1) * CHUNK]);
    }
    Ok(picked.len())
}

fn assert_identical(a: &Path, b: &Path) -> Result<()> {
    anyhow::ensure!(
        std::fs::read(a)? == std::fs::read(b)?,
        "{} differs from {}",
        b.display(),
        a.display()
    );
    Ok(())
}

/// Starts an rsync daemon serving `dest_dir` and times `rsync --inplace` of `src` into it.
async fn rsync_push(tmp: &Path, src: &Path, dest_dir: &Path) -> Result<Duration> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = tmp.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\nuid = root\ngid = root\n[m]\npath = {}\nread only = no\n",
            dest_dir.display()
        ),
    )?;
    let mut daemon = tokio::process::Command::new("rsync")
        .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--config={}", conf.display()))
        .kill_on_drop(true)
        .spawn()
        .context("starting rsync --daemon (is rsync installed?)")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let status = tokio::process::Command::new("rsync")
        .args(["--inplace", "--no-whole-file"])
        .arg(src)
        .arg(format!("rsync://127.0.0.1:{port}/m/region.bin"))
        .status()
        .await?;
    let d = t.elapsed();
    daemon.kill().await.ok();
    anyhow::ensure!(status.success(), "rsync failed: {status}");
    assert_identical(src, &dest_dir.join("region.bin"))?;
    Ok(d)
}
