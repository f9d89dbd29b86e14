//! An application that embeds memsync: it writes into a `TrackedRegion` (memfd-backed memory
//! whose writes are tracked exactly with userfaultfd WP_ASYNC + PAGEMAP_SCAN) and replicates it
//! to a `peer serve` with `sync::run`.
//!
//! ```sh
//! peer serve --listen 127.0.0.1:7447 --dir /tmp/replicas --trust "$(peer id --identity /tmp/app-id)"
//! cargo run --example embedded -- --peer 127.0.0.1:7447 --trust <serve's fingerprint> \
//!     --identity /tmp/app-id [--size-mib 64] [--seconds 10]
//! cmp <(…) /tmp/replicas/embedded    # the replica follows the application's memory
//! ```

use memsync_peer::embed::TrackedRegion;
use memsync_peer::net::identity::{Fingerprint, Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use memsync_peer::roles::owner::{SyncOptions, SyncStats};
use rand::{Rng, RngCore, SeedableRng};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip_while(|a| a != name);
    it.next()?;
    it.next()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let peer: std::net::SocketAddr = arg("--peer")
        .ok_or_else(|| anyhow::anyhow!("usage: embedded --peer ADDR --trust FP [--identity DIR] [--size-mib N] [--seconds N]"))?
        .parse()?;
    let trust = TrustSet::new([Fingerprint::parse(
        &arg("--trust").ok_or_else(|| anyhow::anyhow!("--trust FP is required"))?,
    )?]);
    let id_dir = arg("--identity")
        .map(PathBuf::from)
        .map_or_else(Identity::default_dir, Ok)?;
    let id = Identity::load_or_create(&id_dir)?;
    let size = arg("--size-mib").map_or(Ok(64), |s| s.parse())? << 20;
    let seconds: u64 = arg("--seconds").map_or(Ok(10), |s| s.parse())?;
    println!("this application's identity: {}", id.fingerprint());

    // The application's memory: write to it like any &mut [u8].
    let mut region = TrackedRegion::new(size)?;
    rand::rng().fill_bytes(&mut region[..size / 2]);
    let sync_region = region.sync_region("embedded")?;

    let ep = PeerEndpoint::client_for(peer, &id, trust)?;
    let stats = Arc::new(SyncStats::default());
    let opts = SyncOptions {
        interval: Duration::from_millis(100),
        ..SyncOptions::default()
    };
    let st = stats.clone();
    let sync = tokio::spawn(async move {
        memsync_peer::roles::owner::run(&ep, peer, vec![sync_region], &opts, st).await
    });

    // The application at work: small scattered writes, ten times a second.
    let start = Instant::now();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..100 {
            let i = rng.random_range(0..size);
            region[i] = rng.random();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if sync.is_finished() {
            break;
        }
        println!(
            "{:4.1} s: {} rounds acknowledged, {} chunks sent, last lag {:.1} ms",
            start.elapsed().as_secs_f64(),
            stats.rounds_acked.load(Relaxed),
            stats.chunks_sent.load(Relaxed),
            stats.last_lag_us.load(Relaxed) as f64 / 1e3
        );
    }
    if sync.is_finished() {
        sync.await??;
    }
    Ok(())
}
