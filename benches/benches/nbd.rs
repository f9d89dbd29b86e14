//! NBD: writes and reads by real clients against memsync's exports, with baselines from the same
//! run:
//! 1. `qemu-img convert` of a region-sized image into `qemu-nbd` serving a local file (baseline),
//!    then into memsync's owner export (`sync --detector nbd`, replicating to a `serve` peer over
//!    loopback QUIC), and the time from the last write to the replica's acknowledgement;
//! 2. a lazy mount of that region: first-touch latency of chunks not yet present (p50, p99, from
//!    the library, over loopback QUIC) and sequential read throughput of a cold mount through NBD
//!    (`nbdcopy` to `null:`), against the raw quinn figure of benches/sync.rs.
//!
//! Run: `cargo bench -p memsync-benches --bench nbd` (NBD_BENCH_MIB sets the size, default 1024;
//! needs qemu-utils and libnbd-bin).

use anyhow::{ensure, Context, Result};
use memsync_benches::mibps;
use memsync_peer::detector::{Marks, MarksDetector};
use memsync_peer::nbd::{FileExport, Listen, MountExport, NbdServer};
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::region::{Source, SourceFile};
use memsync_peer::roles::mount::{MemorySink, RemoteRegion};
use memsync_peer::roles::owner::{SyncOptions, SyncRegion, SyncStats};
use rand::RngCore;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    memsync_benches::block_on(bench())
}

/// `qemu-img convert` of the raw `image` into the existing NBD export at `uri`.
fn convert_into(image: &std::path::Path, uri: &str) -> Result<Duration> {
    let image = image.to_str().context("image path is not UTF-8")?;
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", image, uri],
    )
}

fn run(cmd: &str, args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(t.elapsed())
}

async fn bench() -> Result<()> {
    let size: usize = std::env::var("NBD_BENCH_MIB").map_or(1024, |v| v.parse().unwrap()) << 20;
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image.raw");
    let mut v = vec![0u8; size];
    rand::rng().fill_bytes(&mut v);
    std::fs::write(&image, &v)?;
    drop(v);

    // 1a. Baseline: qemu-nbd serving a local file.
    let target = tmp.path().join("qemu-target.raw");
    std::fs::File::create(&target)?.set_len(size as u64)?;
    let sock = tmp.path().join("qemu.sock");
    let mut qemu_nbd = Command::new("qemu-nbd")
        .args(["-f", "raw", "-x", "x", "-t", "--cache=writeback", "-k"])
        .arg(&sock)
        .arg(&target)
        .spawn()
        .context("starting qemu-nbd")?;
    while !sock.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let uri = format!("nbd+unix:///x?socket={}", sock.display());
    let t_qemu = convert_into(&image, &uri)?;
    qemu_nbd.kill()?;
    println!(
        "qemu-img convert {} MiB into qemu-nbd (local file): {:.0} ms, {:.0} MiB/s (baseline)",
        size >> 20,
        t_qemu.as_secs_f64() * 1e3,
        mibps(size as u64, t_qemu)
    );

    // 1b. memsync's owner export, replicating to a serve peer.
    let (a, b) = (Identity::generate()?, Identity::generate()?);
    let replicas = tmp.path().join("replicas");
    std::fs::create_dir_all(&replicas)?;
    let server = PeerEndpoint::loopback(&b, a.fingerprint())?;
    let addr = server.local_addr();
    let dir = memsync_peer::region::ReplicaDir::open(&replicas)?;
    tokio::spawn(async move { memsync_peer::roles::replica::serve(&server, dir).await });
    let owned = tmp.path().join("region.raw");
    std::fs::File::create(&owned)?.set_len(size as u64)?;
    let source = Arc::new(SourceFile::open(&owned, 16)?);
    let marks = Marks::new(source.geometry());
    let export = FileExport::open(&owned, marks.clone(), false)?;
    let nbd = NbdServer::bind(&Listen::Unix(tmp.path().join("memsync.sock"))).await?;
    let uri = nbd.uri("region.raw");
    tokio::spawn(nbd.serve("region.raw".into(), Arc::new(export)));
    let detector = Box::new(MarksDetector::nbd(marks.clone(), source.clone()));
    let region = SyncRegion::new(source, "region.raw", detector)?;
    let stats = Arc::new(SyncStats::default());
    let client = PeerEndpoint::client_for(addr, &a, TrustSet::new([b.fingerprint()]))?;
    {
        let stats = stats.clone();
        let opts = SyncOptions {
            interval: Duration::from_secs(3600),
            ..SyncOptions::default()
        };
        tokio::spawn(async move {
            memsync_peer::roles::owner::run(&client, addr, vec![region], &opts, stats).await
        });
    }
    while stats.reconciles.load(Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t_ours = tokio::task::block_in_place(|| convert_into(&image, &uri))?;
    let written = Instant::now();
    marks.replicated(marks.position()).await;
    let tail = written.elapsed();
    let replica = std::fs::read(replicas.join("region.raw"))?;
    ensure!(replica == std::fs::read(&image)?, "replica differs");
    drop(replica);
    println!(
        "qemu-img convert {} MiB into memsync's export: {:.0} ms, {:.0} MiB/s = {:.2}x qemu-nbd; replica acknowledged the last write {:.0} ms after it",
        size >> 20,
        t_ours.as_secs_f64() * 1e3,
        mibps(size as u64, t_ours),
        t_qemu.as_secs_f64() / t_ours.as_secs_f64(),
        tail.as_secs_f64() * 1e3
    );

    // 2. Lazy mounts of the replica held by the serve peer.
    let mount_ep = PeerEndpoint::client_for(addr, &a, TrustSet::new([b.fingerprint()]))?;
    let mut lat = Vec::new();
    for round in 0..20u64 {
        let (remote, _) = mount(&mount_ep, addr).await?;
        let n = remote.geometry().chunk_count();
        // Touch chunks far from the start, where the background pull has not been yet.
        let i = n - 1 - round * 37 % (n / 2);
        let t = Instant::now();
        remote.ensure(i..i + 1).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "lazy mount, first touch of a chunk not yet present (64 KiB, {} mounts): p50 {:.0} us, p99 {:.0} us",
        lat.len(),
        p(0.5),
        p(0.99)
    );
    let (remote, sink) = mount(&mount_ep, addr).await?;
    let nbd = NbdServer::bind(&Listen::Unix(tmp.path().join("mount.sock"))).await?;
    let uri = nbd.uri("region.raw");
    tokio::spawn(nbd.serve(
        "region.raw".into(),
        Arc::new(MountExport::new(remote, sink)),
    ));
    let t_read = tokio::task::block_in_place(|| run("nbdcopy", &[&uri, "null:"]))?;
    println!(
        "cold lazy mount, sequential read of {} MiB through NBD (nbdcopy): {:.0} ms, {:.0} MiB/s",
        size >> 20,
        t_read.as_secs_f64() * 1e3,
        mibps(size as u64, t_read)
    );
    Ok(())
}

async fn mount(
    ep: &PeerEndpoint,
    addr: std::net::SocketAddr,
) -> Result<(RemoteRegion, Arc<MemorySink>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let remote = RemoteRegion::mount_with(
        ep,
        addr,
        "region.raw",
        Box::new(move |g| {
            let s = Arc::new(MemorySink::new(g));
            let _ = tx.send(s.clone());
            s
        }),
    )
    .await?;
    Ok((remote, rx.recv()?))
}
