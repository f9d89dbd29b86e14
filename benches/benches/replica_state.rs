//! What the replica's persisted state (DIR/.NAME.index, region/index.rs) buys and costs, on the
//! disk under $TMPDIR, one run:
//! 1. apply: 64 KiB chunks written through `ReplicaFile` (index kept, one commit per 16 MiB)
//!    against plain pwrite(2) of the same bytes to a plain file (the direct path without an index);
//! 2. restart to reconciled: a continuous owner (library `run`) and a replica of REPLICA_BENCH_MIB
//!    (default 1024) that is stopped cleanly and started again; the time from the owner's new
//!    connection to its completed reconciliation, with the index and with the index deleted (every
//!    chunk hashed), with the replica's pages in the page cache (warm) and dropped from it (cold,
//!    posix_fadvise DONTNEED).
//!
//! Run: `cargo bench -p memsync-benches --bench replica_state`.

use anyhow::Result;
use memsync_benches::mibps;
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::region::{ReplicaDir, ReplicaFile};
use memsync_peer::roles::owner::{SyncOptions, SyncRegion, SyncStats};
use memsync_peer::roles::replica::{Policy, ServeOptions};
use memsync_protocol::Geometry;
use rand::RngCore;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 10;

fn main() -> Result<()> {
    memsync_benches::block_on(bench())
}

async fn bench() -> Result<()> {
    let mib: usize = std::env::var("REPLICA_BENCH_MIB").map_or(1024, |v| v.parse().unwrap());
    let size = mib << 20;
    let tmp = tempfile::tempdir()?;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);

    for pair in 1..=3 {
        let (direct, indexed) = apply(tmp.path(), &data)?;
        println!(
            "pair {pair}, apply {mib} MiB: pwrite {:.0} MiB/s (baseline); ReplicaFile with index {:.0} MiB/s = {:.2}x",
            mibps(size as u64, direct),
            mibps(size as u64, indexed),
            direct.as_secs_f64() / indexed.as_secs_f64()
        );
    }

    let src = tmp.path().join("region.bin");
    std::fs::write(&src, &data)?;
    drop(data);
    for cold in [false, true] {
        let (with, without) = restart(tmp.path(), &src, cold).await?;
        println!(
            "restart to reconciled, {mib} MiB, {}: without index {:.1} ms (baseline), with index {:.1} ms = {:.0}x faster",
            if cold { "cold" } else { "warm" },
            without.as_secs_f64() * 1e3,
            with.as_secs_f64() * 1e3,
            without.as_secs_f64() / with.as_secs_f64()
        );
    }
    Ok(())
}

/// Writes `data` as chunks with pwrite to a plain file, then through a `ReplicaFile`; both times
/// include an fdatasync at the end.
fn apply(dir: &Path, data: &[u8]) -> Result<(Duration, Duration)> {
    let plain = std::fs::File::create(dir.join("plain.bin"))?;
    plain.set_len(data.len() as u64)?;
    let t = Instant::now();
    for (i, c) in data.chunks(CHUNK).enumerate() {
        plain.write_all_at(c, (i * CHUNK) as u64)?;
    }
    plain.sync_data()?;
    let direct = t.elapsed();
    drop(plain);

    let replicas = dir.join("apply");
    let _ = std::fs::remove_dir_all(&replicas);
    let replicas = ReplicaDir::open(&replicas)?;
    let geom = Geometry::new(data.len() as u64, 16)?;
    let mut f = ReplicaFile::open(&replicas, "r", geom, false)?;
    let t = Instant::now();
    for (i, c) in data.chunks(CHUNK).enumerate() {
        f.write_chunk(i as u64, Some(c))?;
        if (i + 1) % 256 == 0 {
            f.commit(i as u64 / 256 + 1)?;
        }
    }
    f.sync()?;
    let indexed = t.elapsed();
    Ok((direct, indexed))
}

/// A serve into `dir` on `addr` (a fresh endpoint), as a task.
fn serve(
    b: &Identity,
    a: &Identity,
    addr: SocketAddr,
    dir: &Path,
) -> Result<(quinn::Endpoint, tokio::task::JoinHandle<()>)> {
    // The stopped serve's socket goes once its last connection task has ended.
    let mut tries = 0;
    let ep = loop {
        match PeerEndpoint::bind(addr, b, TrustSet::new([a.fingerprint()]), true) {
            Ok(ep) => break ep,
            Err(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let quic = ep.endpoint.clone();
    let dir = ReplicaDir::open(dir)?;
    let policy = Policy::load(dir.path(), Vec::new(), Vec::new())?;
    let task = tokio::spawn(async move {
        memsync_peer::roles::replica::serve_with(&ep, dir, policy, ServeOptions::default()).await
    });
    Ok((quic, task))
}

/// Stops a serve: its connections closed, its streams ended (each replica checkpointed as it
/// drops), its socket released.
async fn stop(quic: quinn::Endpoint, task: tokio::task::JoinHandle<()>) {
    quic.close(0u32.into(), b"restart");
    quic.wait_idle().await;
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Waits until `counter` exceeds `n`; returns when it did.
async fn past(counter: &std::sync::atomic::AtomicU64, n: u64) -> Instant {
    while counter.load(Ordering::SeqCst) <= n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Instant::now()
}

/// Drops `path`'s clean pages from the page cache.
fn uncache(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path)?;
    f.sync_data()?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

/// A replica of `src` made by a continuous owner, then two restarts of its serve: with the index,
/// then with it deleted. Each time: new connection → reconciliation done.
async fn restart(tmp: &Path, src: &Path, cold: bool) -> Result<(Duration, Duration)> {
    let (a, b) = (Identity::generate()?, Identity::generate()?);
    let dir = tmp.join(if cold { "cold" } else { "warm" });
    let addr: SocketAddr = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.local_addr()?
    };
    let mut running = serve(&b, &a, addr, &dir)?;
    let stats = Arc::new(SyncStats::default());
    let owner = {
        let (stats, src) = (stats.clone(), src.to_owned());
        let client = PeerEndpoint::client_for(addr, &a, TrustSet::new([b.fingerprint()]))?;
        let opts = SyncOptions {
            reconnect_for: Duration::from_secs(600),
            ..SyncOptions::default()
        };
        tokio::spawn(async move {
            let region = SyncRegion::open(&src, "region.bin", 16)?;
            memsync_peer::roles::owner::run(&client, addr, vec![region], &opts, stats).await?;
            anyhow::Ok(())
        })
    };
    past(&stats.rounds_acked, 0).await;
    let mut times = Vec::new();
    for keep_index in [true, false] {
        stop(running.0, running.1).await;
        if !keep_index {
            std::fs::remove_file(dir.join(".region.bin.index"))?;
        }
        if cold {
            uncache(&dir.join("region.bin"))?;
            if keep_index {
                uncache(&dir.join(".region.bin.index"))?;
            }
        }
        let (connections, reconciles) = (
            stats.connections.load(Ordering::SeqCst),
            stats.reconciles.load(Ordering::SeqCst),
        );
        running = serve(&b, &a, addr, &dir)?;
        let connected = past(&stats.connections, connections).await;
        let reconciled = past(&stats.reconciles, reconciles).await;
        times.push(reconciled - connected);
    }
    owner.abort();
    stop(running.0, running.1).await;
    Ok((times[0], times[1]))
}
