//! A process that hands its memory to a peer for replication over a Unix socket: it sends a
//! uffd, a memfd and its pagemap (the message is documented in `memsync_peer::uffd::handover`)
//! to `peer uffd track`, then writes to the region; the peer tracks the writes and replicates.
//!
//! ```sh
//! peer serve --listen 127.0.0.1:7447 --dir /tmp/replicas --trust <tracker's fingerprint>
//! peer uffd track --socket /tmp/track.sock --peer 127.0.0.1:7447 --trust <serve's fingerprint>
//! cargo run --example handover_client -- --socket /tmp/track.sock --name cache [--size-mib 16] [--seconds 10]
//! ```

use memsync_peer::uffd::handover::HandedRegion;
use rand::Rng;
use std::path::Path;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip_while(|a| a != name);
    it.next()?;
    it.next()
}

fn main() -> anyhow::Result<()> {
    let socket = arg("--socket").ok_or_else(|| {
        anyhow::anyhow!(
            "usage: handover_client --socket PATH --name NAME [--size-mib N] [--seconds N]"
        )
    })?;
    let name = arg("--name").unwrap_or_else(|| "handed".into());
    let size = arg("--size-mib").map_or(Ok(16), |s| s.parse())? << 20;
    let seconds: u64 = arg("--seconds").map_or(Ok(10), |s| s.parse())?;
    let mut region = HandedRegion::create(Path::new(&socket), &name, size, 65536, None)?;
    println!("{name}: {size} bytes handed over; writing for {seconds} s");
    let mut rng = rand::rng();
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..50 {
            let i = rng.random_range(0..region.len());
            region[i] = rng.random();
            writes += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{writes} writes; exiting (the peer reconciles the last ones by hash)");
    Ok(())
}
