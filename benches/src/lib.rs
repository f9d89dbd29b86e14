//! Shared helpers for memsync's benchmarks: timing, reporting and the raw-QUIC baseline.

use anyhow::{Context, Result};
use bytes::Bytes;
use memsync_peer::identity::{Identity, TrustSet};
use memsync_peer::transport::PeerEndpoint;
use rand::RngCore;
use std::time::{Duration, Instant};

/// Runs `f` `runs` times and returns the fastest wall time.
pub fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        let d = t.elapsed();
        best = Some(best.map_or(d, |b: Duration| b.min(d)));
        last = Some(v);
    }
    (best.expect("runs > 0"), last.expect("runs > 0"))
}

/// Bytes per second as GB/s (10^9).
pub fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Bytes per second as MiB/s.
pub fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}

/// The baseline for every transfer figure: `size` bytes over one QUIC stream between two of our
/// endpoints on loopback (same TLS and transport settings), written in 1 MiB blocks and
/// discarded by the receiver. Returns the wall time and the process CPU time it took.
pub async fn raw_quinn(size: u64, a: &Identity, b: &Identity) -> Result<(Duration, Duration)> {
    let server = PeerEndpoint::bind(
        "127.0.0.1:0".parse()?,
        b,
        TrustSet::new([a.fingerprint()]),
        true,
    )?;
    let addr = server.local_addr();
    let sink = tokio::spawn(async move {
        let incoming = server.endpoint.accept().await.context("no connection")?;
        let session = PeerEndpoint::accept(incoming).await?;
        let (mut send, mut recv) = session.conn.accept_bi().await?;
        let mut n = 0u64;
        while let Some(c) = recv.read_chunk(usize::MAX, true).await? {
            n += c.bytes.len() as u64;
        }
        send.write_all(&[1]).await?;
        send.finish()?;
        let _ = send.stopped().await;
        anyhow::Ok(n)
    });
    let client = PeerEndpoint::client_for(addr, a, TrustSet::new([b.fingerprint()]))?;
    let session = client.connect(addr).await?;
    let mut block = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut block);
    let block = Bytes::from(block);
    let (t, cpu) = (Instant::now(), cpu_time());
    let (mut send, mut recv) = session.conn.open_bi().await?;
    for _ in 0..size >> 20 {
        send.write_chunk(block.clone()).await?;
    }
    send.finish()?;
    let mut done = [0u8; 1];
    recv.read_exact(&mut done).await?;
    let (d, c) = (t.elapsed(), cpu_time() - cpu);
    anyhow::ensure!(sink.await?? == size, "raw transfer lost bytes");
    Ok((d, c))
}

/// CPU time used by this process so far, all threads (CLOCK_PROCESS_CPUTIME_ID).
pub fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
