//! `peer demo`: two real peers in one process on loopback QUIC. A writer thread mutates a
//! generated region through a shared mapping while the owner syncs it to the replica; a line per
//! second shows throughput and lag, and the end checks the replica byte for byte.

use anyhow::{bail, Context, Result};
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::roles::owner::{human_bytes, SyncOptions, SyncRegion, SyncStats};
use rand::{Rng, RngCore};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Region size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Seconds the writer runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// 4 KiB writes per second by the writer.
    #[arg(long, default_value_t = 2000)]
    writes_per_sec: u64,
    /// Milliseconds between detector runs.
    #[arg(long, default_value_t = 200)]
    interval: u64,
}

pub async fn run(a: DemoArgs) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("memsync-demo-{}", std::process::id()));
    let replicas = tmp.join("replicas");
    std::fs::create_dir_all(&replicas).context("creating the demo directory")?;
    let _cleanup = RemoveOnDrop(tmp.clone());
    let region = tmp.join("demo.ram");
    let size = a.size_mib << 20;
    generate(&region, size)?;
    info!(
        "generated a {} region at {}",
        human_bytes(size),
        region.display()
    );

    let (owner_id, replica_id) = (Identity::generate()?, Identity::generate()?);
    let server = PeerEndpoint::loopback(&replica_id, owner_id.fingerprint())?;
    let addr = server.local_addr();
    info!(
        "replica peer {} listening on {addr}",
        &replica_id.fingerprint().to_string()[..16]
    );
    let replicas = memsync_peer::region::ReplicaDir::open(&replicas)?;
    let serving =
        tokio::spawn(async move { memsync_peer::roles::replica::serve(&server, replicas).await });

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes, region) = (stop.clone(), writes.clone(), region.clone());
        let rate = a.writes_per_sec;
        std::thread::spawn(move || write_randomly(&region, rate, &stop, &writes))
    };

    let client =
        PeerEndpoint::client_for(addr, &owner_id, TrustSet::new([replica_id.fingerprint()]))?;
    let opened = SyncRegion::open(&region, "demo.ram", 12)?;
    let stats = Arc::new(SyncStats::default());
    let opts = SyncOptions {
        interval: Duration::from_millis(a.interval),
        ..SyncOptions::default()
    };
    let syncing = {
        let stats = stats.clone();
        tokio::spawn(async move {
            memsync_peer::roles::owner::run(&client, addr, vec![opened], &opts, stats).await
        })
    };

    let start = Instant::now();
    let mut last_bytes = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while start.elapsed() < Duration::from_secs(a.seconds) {
        ticker.tick().await;
        if syncing.is_finished() {
            break;
        }
        let bytes = stats.bytes_sent.load(Relaxed);
        info!(
            "t={:>3}s  sent {:>10} ({:>10}/s)  rounds acked {:>4}  lag {:>7.1} ms  writer {} writes",
            start.elapsed().as_secs(),
            human_bytes(bytes),
            human_bytes(bytes - last_bytes),
            stats.rounds_acked.load(Relaxed),
            stats.last_lag_us.load(Relaxed) as f64 / 1e3,
            writes.load(Relaxed),
        );
        last_bytes = bytes;
    }
    stop.store(true, Relaxed);
    writer.join().expect("writer thread")?;
    if syncing.is_finished() {
        syncing.await??;
        bail!("the sync stopped early");
    }
    info!(
        "writer stopped after {} writes; waiting for the replica to catch up",
        writes.load(Relaxed)
    );

    let replica = tmp.join("replicas").join("demo.ram");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::fs::read(&region)? == std::fs::read(&replica).unwrap_or_default() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the replica did not converge within 30 s of the writer stopping");
        }
    }
    syncing.abort();
    serving.abort();
    info!(
        "replica identical to the region: {} sent for {} of region and {} writes ({:.2}x the region), {} rounds",
        human_bytes(stats.bytes_sent.load(Relaxed)),
        human_bytes(size),
        writes.load(Relaxed),
        stats.bytes_sent.load(Relaxed) as f64 / size as f64,
        stats.rounds_acked.load(Relaxed)
    );
    Ok(())
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn generate(path: &std::path::Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = rand::rng();
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        rng.fill_bytes(&mut block[..n]);
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Writes random 4 KiB blocks at random offsets through a shared mapping, `rate` per second
/// (page-aligned, so with the demo's 4 KiB chunks each write dirties exactly one chunk).
fn write_randomly(
    path: &std::path::Path,
    rate: u64,
    stop: &AtomicBool,
    writes: &AtomicU64,
) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    // SAFETY: the demo's writer is the only writer; the owner maps the same file read-only and
    // only copies and hashes it.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
    let mut rng = rand::rng();
    let blocks = map.len() / 4096;
    let start = Instant::now();
    let mut done = 0u64;
    while !stop.load(Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while done < due {
            let b = rng.random_range(0..blocks);
            rng.fill_bytes(&mut map[b * 4096..(b + 1) * 4096]);
            done += 1;
        }
        writes.store(done, Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
