//! What durable acknowledgements and crash-consistent replicas cost (spec §8.4): the same syncs
//! against a replica that ACKs applied generations (`--durability none`, the direct path), one
//! that ACKs only what is on stable storage (`fsync`) and one that stages every generation in a
//! journal and applies it whole at COMMIT (`--consistent`), interleaved in one run, replicas on the
//! disk under $TMPDIR:
//! 1. full sync of a fresh region (apply throughput), raw quinn of the same size as baseline;
//! 2. change → ACK of small rounds of a continuous sync (10 ms detector interval): 16 random
//!    64 KiB chunks of a 16 MiB region rewritten, then the owner's lag from the detector run that
//!    found them to the round's ACK; the p50 of 31 repeats.
//!
//! Run: `cargo bench -p memsync-benches --bench durability` (DURABILITY_BENCH_MIB sets the full
//! sync's size, default 512; DURABILITY_BENCH_PAIRS the interleaved pairs, default 3).

use anyhow::Result;
use memsync_benches::{mibps, raw_quinn};
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::roles::owner::{SyncOptions, SyncRegion, SyncStats};
use memsync_peer::roles::replica::{Durability, Policy, ServeOptions};
use rand::{Rng, RngCore};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 10;

fn main() -> Result<()> {
    memsync_benches::block_on(bench())
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

async fn bench() -> Result<()> {
    let size = env("DURABILITY_BENCH_MIB", 512) << 20;
    let pairs = env("DURABILITY_BENCH_PAIRS", 3);
    let (a, b) = (Identity::generate()?, Identity::generate()?);
    let (raw, _) = raw_quinn(size as u64, &a, &b).await?;
    println!(
        "raw quinn, {} MiB: {:.0} MiB/s (baseline)",
        size >> 20,
        mibps(size as u64, raw)
    );
    for pair in 1..=pairs {
        for level in [Level::None, Level::Fsync, Level::Consistent] {
            let (full, p50) = run(&a, &b, size, level).await?;
            println!(
                "pair {pair}, {level:?}: full sync {:.0} MiB/s = {:.2}x raw quinn; continuous 16-chunk round change -> ACK p50 {:.1} ms",
                mibps(size as u64, full),
                raw.as_secs_f64() / full.as_secs_f64(),
                p50.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}

/// How the replica applies and acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    None,
    Fsync,
    Consistent,
}

/// A serve at `level` into a fresh directory: the full sync's time, then the p50 of small rounds.
async fn run(
    a: &Identity,
    b: &Identity,
    size: usize,
    level: Level,
) -> Result<(Duration, Duration)> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("region.bin");
    let replicas = tmp.path().join("replicas");
    let mut v = vec![0u8; size];
    rand::rng().fill_bytes(&mut v);
    std::fs::write(&src, v)?;
    let server = PeerEndpoint::bind(
        "127.0.0.1:0".parse()?,
        b,
        TrustSet::new([a.fingerprint()]),
        true,
    )?;
    let addr = server.local_addr();
    let dir = memsync_peer::region::ReplicaDir::open(&replicas)?;
    let policy = Policy::load(dir.path(), Vec::new(), Vec::new())?;
    let opts = ServeOptions {
        durability: if level == Level::Fsync {
            Durability::Fsync
        } else {
            Durability::None
        },
        consistent: level == Level::Consistent,
        ..ServeOptions::default()
    };
    let serving = tokio::spawn(async move {
        memsync_peer::roles::replica::serve_with(&server, dir, policy, opts).await
    });
    let once = SyncOptions {
        once: true,
        require_durable: level != Level::None,
        ..SyncOptions::default()
    };
    let sync = |client: PeerEndpoint, src: &Path| {
        let (src, once) = (src.to_owned(), once.clone());
        async move {
            let name = src.file_name().unwrap().to_str().unwrap().to_owned();
            let region = SyncRegion::open(&src, &name, 16)?;
            memsync_peer::roles::owner::run(&client, addr, vec![region], &once, Default::default())
                .await?;
            anyhow::Ok(())
        }
    };
    let client = || PeerEndpoint::client_for(addr, a, TrustSet::new([b.fingerprint()]));
    let t = Instant::now();
    sync(client()?, &src).await?;
    let full = t.elapsed();
    assert_eq!(
        std::fs::read(&src)?,
        std::fs::read(replicas.join("region.bin"))?
    );
    // Small rounds of a continuous sync: the owner's lag from the detector run that found the
    // change to the round's ACK.
    let small = tmp.path().join("small.bin");
    std::fs::write(&small, vec![0u8; 16 << 20])?;
    let stats = Arc::new(SyncStats::default());
    let owner = {
        let (small, stats, client) = (small.clone(), stats.clone(), client()?);
        let opts = SyncOptions {
            interval: Duration::from_millis(10),
            once: false,
            ..once.clone()
        };
        tokio::spawn(async move {
            let region = SyncRegion::open(&small, "small.bin", 16)?;
            memsync_peer::roles::owner::run(&client, addr, vec![region], &opts, stats).await?;
            anyhow::Ok(())
        })
    };
    let acked = |n: u64| {
        let stats = stats.clone();
        async move {
            while stats.rounds_acked.load(Ordering::SeqCst) <= n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    acked(0).await;
    let mut rounds = Vec::new();
    for _ in 0..31 {
        let n = stats.rounds_acked.load(Ordering::SeqCst);
        rewrite(&small, 16)?;
        acked(n).await;
        // A rewrite a scan cut in two ends with the second round.
        tokio::time::sleep(Duration::from_millis(30)).await;
        rounds.push(Duration::from_micros(
            stats.last_lag_us.load(Ordering::SeqCst),
        ));
    }
    owner.abort();
    rounds.sort();
    assert_eq!(
        std::fs::read(&small)?,
        std::fs::read(replicas.join("small.bin"))?
    );
    serving.abort();
    Ok((full, rounds[rounds.len() / 2]))
}

/// Rewrites `n` random 64 KiB chunks of `path`.
fn rewrite(path: &Path, n: usize) -> Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let chunks = f.metadata()?.len() as usize / CHUNK;
    let mut rng = rand::rng();
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..n {
        rng.fill_bytes(&mut buf);
        f.write_all_at(&buf, (rng.random_range(0..chunks) * CHUNK) as u64)?;
    }
    Ok(())
}
